"""LoadCounts rows stamped past 9999-12-31 (``LAST_EVENT_TIME_MS``, the last instant a ``Timestamp`` carries): no
clock ever loads one, so each is refused where the block is read (``count_rows``), naming ``as_of`` and the last time
— not as stamped ahead of this process's clock (E7), which had it judged by its shard (or sent on to its group's
owner) as a row a clock ahead may have loaded, and a shard that could not answer then refused the whole call."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge.load import _is_ahead
from reservation import Limits, ResourceExhausted, count_rows
from reservation._validate import LAST_EVENT_TIME_MS
from tests.conftest import ServiceFactory

T0 = 1_790_000_000_000


def _columns(at: list[int]) -> tuple[bytes, bytes, bytes, bytes]:
    n = len(at)
    return (np.arange(n, dtype="<u4").tobytes(), bytes(4 * n), np.full(n, 5, dtype="<i8").tobytes(),
            np.array(at, dtype="<i8").tobytes())


def test_a_row_past_the_last_time_is_refused_naming_it_not_as_ahead_of_the_clock() -> None:
    """Row 1 past 9999-12-31, row 2 far past it (the largest int64): each refused naming ``as_of`` and the last
    time, not as ahead of the clock (``edge/load.py`` would ask its shard); row 0, within the skew, is loaded, and a
    row at the last time itself, with a clock there, is not refused for it."""
    at = [T0, LAST_EVENT_TIME_MS + 1, 2**63 - 1]
    block, errors = count_rows("erp", ["A", "B", "C"], ["L1"], _columns(at), T0, Limits())
    assert sorted(errors) == [1, 2] and len(block) == 1
    for row in (1, 2):
        assert errors[row].field == "as_of", errors[row]
        assert "9999-12-31" in errors[row].problem and not _is_ahead(errors[row]), errors[row].problem
    _, none = count_rows("erp", ["A"], ["L1"], _columns([LAST_EVENT_TIME_MS]), LAST_EVENT_TIME_MS, Limits())
    assert none == {}


async def test_a_block_with_a_row_past_the_last_time_is_answered_while_its_shard_cannot_judge_it(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real service and Redis. The row's shard refusing work (its mailbox full): taken for a row ahead of the clock,
    the row was asked of it, and the call was refused whole (RESOURCE_EXHAUSTED) for a row no shard ever loads. Now
    the block is answered: that row rejected, naming ``as_of`` and 9999-12-31."""
    service, client = await start_service(shards=1)
    engine = service.engine
    assert engine is not None

    def shed(_work: Any) -> Any:
        raise ResourceExhausted("mailbox full")

    monkeypatch.setattr(engine.actors[0], "submit", shed)
    request = pb.LoadCountsRequest(source="erp", skus=["A"], locations=["L1"], sku_index=bytes(4),
                                   location_index=bytes(4), on_hand=np.array([5], dtype="<i8").tobytes(),
                                   as_of=np.array([LAST_EVENT_TIME_MS + 1], dtype="<i8").tobytes())
    answer = await client.load_counts(request)
    monkeypatch.undo()
    assert answer.invalid == 1 and [list(group.rows) for group in answer.rejected] == [[0]], answer
    message = answer.rejected[0].error.message
    assert message.startswith("as_of") and "9999-12-31" in message, message
