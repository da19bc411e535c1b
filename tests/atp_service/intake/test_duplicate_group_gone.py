"""A fact answered DUPLICATE (E8) from its shard's memory whose group this process gives up before the answer is
checked against Redis (``intake.duplicates.not_durable``: ``Moved``, ATP_OWNERSHIP=leases) is never acknowledged
as a duplicate by this process: RecordEvents and LoadCounts refuse the call ``GROUP_MOVED`` (sent again, to the
group's owner), the input streams leave its entry pending (read again, by the owner), never dead-lettered. The
group is given up (``Engine.vacate``, as a hand-over does) in the turn the check begins; real Redis, real gRPC."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np
import pytest
import redis

from atp_client import Retryable
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.fact_helpers import F, dead_lettered, wait_consumed
from tests.conftest import ServiceFactory
from tests.ports import held_port
from tests.waiting import until

LEASED = {"ownership": "leases", "lease_ms": 60_000, "shards": 1, "host": "127.0.0.1"}
STREAM = "atp:in:pos"


def given_up_when_checked(service: AtpService, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The group of the shards ``not_durable`` checks given up as the check begins; the shards so given up."""
    engine = service.engine
    assert engine is not None
    check, gone = engine.check_logs_reach, []

    async def vacated_first(only: Collection[int] | None = None) -> Any:
        for shard in only or ():
            gone.append(shard)
            await engine.vacate(shard, snapshot=False)
        return await check(only)

    monkeypatch.setattr(engine, "check_logs_reach", vacated_first)
    return gone


def _count(at: int) -> pb.LoadCountsRequest:
    return pb.LoadCountsRequest(source="erp", skus=["A"], locations=["L1"], sku_index=np.zeros(1, "<u4").tobytes(),
                                location_index=np.zeros(1, "<u4").tobytes(), on_hand=np.full(1, 7, "<i8").tobytes(),
                                as_of=np.full(1, at, "<i8").tobytes())


@pytest.mark.parametrize("call", ["RecordEvents", "LoadCounts"])
async def test_a_duplicate_whose_group_is_given_up_is_refused_moved_over_grpc(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    service, client = await start_service(**LEASED, port=held_port(), input_streams=())
    now = service.engine.clock.now_ms()  # type: ignore[union-attr]

    async def send() -> int:
        if call == "RecordEvents":
            (result,) = await client.record_events([receipt("e1", "A", "L1", 4, now - 1000)])
            return int(result.outcome)
        answer = await client.load_counts(_count(now - 1000))
        return pb.FACT_OUTCOME_APPLIED if answer.applied else pb.FACT_OUTCOME_DUPLICATE if answer.duplicate else 0

    assert await send() == pb.FACT_OUTCOME_APPLIED
    gone = given_up_when_checked(service, monkeypatch)
    with pytest.raises(Retryable) as refused:
        await send()
    assert gone == [0] and refused.value.reason == "GROUP_MOVED"


async def test_a_duplicate_read_whose_group_is_given_up_is_left_pending_not_dead_lettered(
        start_service: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    service, _ = await start_service(**LEASED, port=held_port(), input_streams=(STREAM,))
    r: Any = redis.Redis.from_url(redis_url)
    now = service.engine.clock.now_ms()  # type: ignore[union-attr]
    r.xadd(STREAM, F("e1", "RECEIPT", "A", "L1", 4, now - 1000).fields())
    await wait_consumed(redis_url, [STREAM])
    gone = given_up_when_checked(service, monkeypatch)
    again = r.xadd(STREAM, F("e1", "RECEIPT", "A", "L1", 4, now - 1000).fields())  # its entry delivered again
    await until(lambda: gone == [0], "the duplicate's group given up as it is checked")
    await service.stop()  # the reader's handling of it ended, whatever it did
    pending = r.xpending_range(STREAM, "atp", "-", "+", 10)
    assert [entry["message_id"] for entry in pending] == [again]  # left to be read again, by the group's owner
    assert r.xlen("atp:dlq") == 0 and dead_lettered(service, STREAM) == 0
    r.close()
