"""LoadCounts against a real service and Redis: a block split by shard; quarantined rows reach the
quarantine stream and the counters even when another shard of the same block refuses its part
(E6: never dropped silently), and a quarantine stream that cannot be written refuses the call; a
block past max_rows_per_load or max_message_bytes is refused whole."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
import pytest
import redis

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.app.service import AtpService
from reservation import Limits, Reason, ResourceExhausted, Unavailable
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.refusals import fields_of, refused, said
from tests.conftest import ServiceFactory

HOUR = 3_600_000


def _block(skus: list[str], at: list[int]) -> pb.LoadCountsRequest:
    n = len(skus)
    return pb.LoadCountsRequest(source="erp", skus=skus, locations=["L1"],
                                sku_index=np.arange(n, dtype="<u4").tobytes(), location_index=bytes(4 * n),
                                on_hand=np.full(n, 5, dtype="<i8").tobytes(), as_of=np.array(at, dtype="<i8").tobytes())


def _counted(service: AtpService) -> dict[str, float]:
    """LoadCounts' facts by outcome, those counted at least once (quarantined is exported at 0 from the start)."""
    return {s.labels["outcome"]: s.value for m in service.metrics.registry.collect() for s in m.samples
            if s.name == "atp_facts_total" and s.labels.get("origin") == "load" and s.value}


async def _two_shards(start_service: ServiceFactory) -> tuple[AtpService, Any, str, str]:
    """A service of two shards whose stream time is now, and a SKU on each shard."""
    service, client = await start_service(shards=2)
    engine = service.engine
    assert engine is not None
    first = next(f"A{i}" for i in range(100) if engine.place(f"A{i}") == 0)
    second = next(f"B{i}" for i in range(100) if engine.place(f"B{i}") == 1)
    await client.record_events([receipt("r0", first, "L1", 1), receipt("r1", second, "L1", 1)])
    return service, client, first, second


async def test_a_shard_that_refuses_its_part_leaves_the_others_quarantine_in_the_stream(
        start_service: ServiceFactory, redis_url: str) -> None:
    service, client, first, second = await _two_shards(start_service)
    assert service.engine is not None

    def bug(now: int, answers: list[Any]) -> None:
        raise RuntimeError("a bug outside any command")

    service.engine.actors[1]._seal = bug  # type: ignore[method-assign]  # shard 1 fails on its part
    now = service.clock.now_ms()
    with pytest.raises(grpc.aio.AioRpcError) as told:  # shard 0: one applied, one late; shard 1 fails
        await client.load_counts(_block([f"{first}x", first, second], [now, now - 30 * HOUR, now]))
    assert said(told.value)[0] == grpc.StatusCode.UNAVAILABLE
    entries = redis.Redis.from_url(redis_url).xrange("atp:quarantine")
    assert [(e[b"sku"].decode(), e[b"reason"][:4]) for _, e in entries] == [(first, b"late")]
    assert _counted(service) == {"applied": 1, "quarantined": 1, "unavailable": 1}


async def test_a_quarantine_stream_that_cannot_be_written_refuses_the_call(
        start_service: ServiceFactory, redis_url: str) -> None:
    service, client, first, _ = await _two_shards(start_service)
    redis.Redis.from_url(redis_url).set("atp:quarantine", "not a stream")  # every XADD to it fails
    now = service.clock.now_ms()
    with pytest.raises(grpc.aio.AioRpcError) as told:
        await client.load_counts(_block([f"{first}x", first], [now, now - 30 * HOUR]))
    assert said(told.value) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNREACHABLE")
    assert _counted(service) == {"applied": 1, "unavailable": 1}  # the late row: durable, not yet streamed


async def test_a_block_past_max_rows_per_load_is_refused_naming_the_row_columns_and_one_at_it_loads(
        start_service: ServiceFactory) -> None:
    """The rows of a block are its four per-row columns together; a block of too many rows is
    refused naming them all (not ``as_of`` alone, which reads as a fault of the as-of times)."""
    service, client = await start_service(limits=Limits(max_rows_per_load=3))
    now = service.clock.now_ms()
    answer = await client.load_counts(_block(["A", "B", "C"], [now] * 3))  # at the bound: loaded
    assert answer.applied == 3
    refusal = await refused(client.load_counts(_block(["D", "E", "F", "G"], [now] * 4)))
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "LIMIT_EXCEEDED")
    assert fields_of(refusal) == ["sku_index", "location_index", "on_hand", "as_of"]
    assert refusal.metadata["limit"] == "max_rows_per_load"
    assert "4 rows" in refusal.message and "max_rows_per_load=3" in refusal.message
    assert [p.on_hand for p in await client.availability([("D", "L1"), ("A", "L1")])] == [0, 5]  # nothing of it


async def test_a_block_past_max_message_bytes_is_refused_whole_and_a_smaller_one_loads(
        start_service: ServiceFactory) -> None:
    service, client = await start_service(max_message_bytes=64 << 10)
    now = service.clock.now_ms()
    skus = [f"sku-{i:0120d}" for i in range(600)]  # ~75 KB of names: past 64 KiB
    with pytest.raises(grpc.aio.AioRpcError) as told:
        await client.load_counts(_block(skus, [now] * len(skus)))
    assert told.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # gRPC's own: send smaller ones
    assert (await client.availability([(skus[0], "L1")]))[0].on_hand == 0
    assert (await client.load_counts(_block(skus[:300], [now] * 300))).applied == 300


async def test_rows_a_quarantine_stream_could_not_take_are_told_not_loaded(
        start_service: ServiceFactory, redis_url: str) -> None:
    """A quarantined row not yet on the stream is not acknowledged (E6: a resend streams it): the
    refusal's ``rows_loaded`` leaves it out and ``rows_not_loaded`` counts it, as the metric does."""
    service, client, first, _ = await _two_shards(start_service)
    redis.Redis.from_url(redis_url).set("atp:quarantine", "not a stream")
    now = service.clock.now_ms()
    refusal = await refused(client.load_counts(_block([f"{first}x", first], [now, now - 30 * HOUR])))
    assert {k: refusal.metadata.get(k) for k in ("rows_loaded", "rows_applied", "rows_not_loaded")} == {
        "rows_loaded": "1", "rows_applied": "1", "rows_not_loaded": "1"}
    redis.Redis.from_url(redis_url).delete("atp:quarantine")
    again = await client.load_counts(_block([f"{first}x", first], [now, now - 30 * HOUR]))
    assert (again.duplicate, again.quarantined) == (1, 1)
    entries = redis.Redis.from_url(redis_url).xrange("atp:quarantine")
    assert [(e[b"sku"].decode(), e[b"reason"][:4]) for _, e in entries] == [(first, b"late")]


async def test_a_block_one_shard_shed_and_another_holds_in_doubt_is_told_in_doubt(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shard 0 sheds its part (SHARD_OVERLOADED: nothing of it applied), shard 1 loads its own but its
    answer is lost (OUTCOME_UNKNOWN). The caller was told the first refusal in the order of the shards
    - the shed, read as nothing loaded - while shard 1's row was (R7). It is told OUTCOME_UNKNOWN."""
    service, client, first, second = await _two_shards(start_service)
    assert service.engine is not None
    actors = service.engine.actors

    def shed(_work: Any) -> Any:
        raise ResourceExhausted("mailbox full")

    def reply_lost(work: Any, submit: Any = actors[1].submit) -> asyncio.Future[Any]:
        lost: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def landed(reply: asyncio.Future[Any]) -> None:
            assert reply.exception() is None
            lost.set_exception(Unavailable("the shard's answer was lost", Reason.OUTCOME_UNKNOWN))
        submit(work).add_done_callback(landed)
        return lost

    monkeypatch.setattr(actors[0], "submit", shed)
    monkeypatch.setattr(actors[1], "submit", reply_lost)
    now = service.clock.now_ms()
    refusal = await refused(client.load_counts(_block([first, second], [now, now])))
    monkeypatch.undo()
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN"), refusal
    (position,) = await client.availability([(second, "L1")])
    assert position.on_hand == 5  # shard 1's row was loaded
