"""LoadCounts: a row stamped ahead of this process's clock (E7) that its shard applied already (by a clock that ran
ahead) is a duplicate (E8) only once its shard's log is known to hold it (``intake.duplicates.not_durable``); where
it is not known — the log's end unread, the shard stopped, its group given up meanwhile (``Moved``: its owner
judges) — the call is refused as RecordEvents refuses such a fact, to be sent again, never the row rejected as bad
input by a judgement this process could not make. Real Redis behind a real TCP proxy that answers the log's end
read with a reset connection; the service's clock stepped back by hand (NTP)."""

from __future__ import annotations

import numpy as np
import pytest

from atp_client import Retryable
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.redis_proxy import HoldingProxy, proxy
from tests.conftest import services_on

__all__ = ["proxy"]  # the fixture, used by name

T = 1_700_000_000_000
AHEAD_MS = 10 * 60_000  # past the allowed skew (5 min)


def _counts(at: int) -> pb.LoadCountsRequest:
    return pb.LoadCountsRequest(source="erp", skus=["A"], locations=["L1"], sku_index=np.zeros(1, "<u4").tobytes(),
                                location_index=np.zeros(1, "<u4").tobytes(), on_hand=np.full(1, 7, "<i8").tobytes(),
                                as_of=np.full(1, at, "<i8").tobytes())


async def test_a_count_ahead_applied_already_whose_log_is_unread_is_refused_not_rejected(proxy: HoldingProxy) -> None:
    """Defect: ``_loaded_ahead`` kept a row only where its judgement was DUPLICATE; any other (the shard's refusal
    put in by ``not_durable``) left the row's E7 refusal standing, so the call answered OK with the row rejected
    ``as_of`` ahead — a lasting refusal of a count its shard holds applied, which the caller never sends again."""
    proxied = f"redis://127.0.0.1:{proxy._server.sockets[0].getsockname()[1]}/0"  # type: ignore[union-attr]
    clock = ManualClock(T + AHEAD_MS)
    at = T + AHEAD_MS - 60_000
    async with services_on(proxied) as start:
        _, client = await start(clock=clock, owner_check_s=3600.0, redis_timeout_s=1.0)
        assert (await client.load_counts(_counts(at))).applied == 1
        clock._now = T  # stepped back: the row is ahead of this process's clock now (E7)
        proxy.hold(b"XINFO", reset=True)  # the log's end read (``not_durable``) answered by a reset connection
        try:
            with pytest.raises(Retryable) as refused:
                answer = await client.load_counts(_counts(at))
                pytest.fail(f"answered {answer}")  # main: rejected (INVALID_FIELD as_of), nothing else
        finally:
            proxy.hold()
        assert refused.value.reason == "STORAGE_UNREACHABLE"
        answer = await client.load_counts(_counts(at))  # sent again, the log's end read: a duplicate (E8)
        assert (answer.duplicate, answer.applied, len(answer.rejected)) == (1, 0, 0)
