"""WatchAvailability's messages within ``max_message_bytes``, whatever ``watch_batch`` and the ids'
lengths make of them: real service, real Redis and gRPC."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.channel_helpers import fact, wait_for_updates, write_estate
from tests.conftest import ServiceFactory

T = 1_700_000_000_000
SMALLEST = 64 << 10
"""The lowest ``max_message_bytes`` accepted."""
LOC = "dc-" + "x" * 120
KEYS = 500  # one message of the default watch_batch
Response = pb.WatchAvailabilityResponse


async def _updates_until(call: grpc.aio.UnaryStreamCall, done: int, kinds: set[int]) -> list[Response]:  # type: ignore[type-arg]
    messages: list[Response] = []
    while sum(len(m.updates) for m in messages) < done:
        message = await asyncio.wait_for(call.read(), 10)
        assert message.kind in kinds, message.kind
        messages.append(message)
    return messages


async def test_a_snapshot_and_changes_of_long_ids_come_in_messages_a_subscriber_can_receive(
        start_service: ServiceFactory, tmp_path: Path, redis_url: str) -> None:
    """500 updates of long ids (watch_batch's default) outgrew a small ``max_message_bytes``: gRPC failed
    the watch RESOURCE_EXHAUSTED with no reason at its first message, every time it was opened again."""
    estate = (f'[[locations]]\nid = "{LOC}"\ntype = "dc"\n\n[[channels]]\nname = "market"\nsells_from = ["{LOC}"]\n'
              "throttle_ms = 0\nrate_limit_per_s = 100000.0\n")
    service, client = await start_service(clock=ManualClock(T), estate=write_estate(tmp_path, estate),
                                          max_message_bytes=SMALLEST)
    skus = [f"sku-{n:04d}-" + "y" * 110 for n in range(KEYS)]

    async def count_all(quantity: int, t: int) -> None:
        for start in range(0, KEYS, 100):
            await client.record_events([fact(f"c{t}-{n}", "COUNT", skus[n], LOC, quantity, t)
                                        for n in range(start, start + 100)])

    await count_all(40, T - 2000)
    await wait_for_updates(redis_url, "market", KEYS, desk=service.channels)  # published: every one in the snapshot
    call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market", snapshot=True))
    snapshot = await _updates_until(call, KEYS, {Response.KIND_SNAPSHOT})
    assert (await asyncio.wait_for(call.read(), 10)).kind == Response.KIND_SNAPSHOT_END
    assert sorted(u.sku for m in snapshot for u in m.updates) == skus
    assert len({m.version for m in snapshot}) == 1  # each chunk says the snapshot's version
    assert max(m.ByteSize() for m in snapshot) <= SMALLEST

    await count_all(30, T - 1000)
    changes = await _updates_until(call, KEYS, {Response.KIND_CHANGES})
    versions = [u.version for m in changes for u in m.updates]
    assert versions == sorted(versions) and len(set(versions)) == KEYS
    assert [m.version for m in changes] == [m.updates[-1].version for m in changes]  # where each resumes from
    assert {u.quantity for m in changes for u in m.updates} == {30}
    assert max(m.ByteSize() for m in changes) <= SMALLEST
    call.cancel()
