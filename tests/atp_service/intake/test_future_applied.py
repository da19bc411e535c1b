"""E7 against E8 with several processes (``ownership = leases``): a fact applied by a process whose
clock ran ahead, its entry left pending (the acknowledgement lost, the process gone), is claimed by a
process whose clock is right and which took the fact's group over: it was applied, so it is a
duplicate, not a dead letter "in the future". A fact stamped as far ahead and never applied is still
refused (E7)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import redis

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, EmbeddedRedis, ManualClock
from tests.atp_service.fact_helpers import F, wait_consumed
from tests.atp_service.redis_proxy import HoldingProxy
from tests.conftest import test_config as make_config
from tests.ports import held_port
from tests.waiting import until

T = 1_700_000_000_000
AHEAD_MS = 10 * 60_000  # the first process's clock: past the allowed skew (5 min) ahead of the second's
LEASED = {"ownership": "leases", "lease_ms": 5_000, "balance_ms": 200, "host": "127.0.0.1"}
"""Leases of 5 s, turns of 200 ms: a 600 ms lease stops being answered 480 ms after its renewal, which
a busy host's stall outlasts (a call refused GROUP_MOVED); a stopped process's groups, handed over or
lapsed, are taken at the next turn."""


@contextlib.asynccontextmanager
async def leased_client(redis_url: str, now_ms: int) -> AsyncIterator[AtpClient]:
    """A client of a leased service whose clock reads ``now_ms``, started and stopped around the block."""
    service = AtpService(make_config(port=held_port(), **LEASED), redis_url, clock=ManualClock(now_ms))
    try:
        await service.start()
        async with AtpClient(f"127.0.0.1:{service.port}") as client:
            yield client
    finally:
        await service.stop(grace_s=0.1)


async def test_a_fact_applied_by_a_clock_ahead_is_a_duplicate_when_claimed(
        redis_server: EmbeddedRedis, redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    leased = {**LEASED, "claim_idle_ms": 100}
    ahead = AtpService(make_config(redis_timeout_s=30, port=held_port(), **leased), await proxy.start(),
                       clock=ManualClock(T + AHEAD_MS))
    try:
        await ahead.start()
        proxy.hold(b"XACK")  # applied, never acknowledged: as a kill -9 before the XACK
        r.xadd("atp:in:pos", F("e1", "RECEIPT", "A", "S1", 4, T + AHEAD_MS - 60_000).fields())
        await until(lambda: proxy.held, "the entry's fact applied, its acknowledgement held")
    finally:
        await ahead.stop(grace_s=0.1)
        proxy.hold()
        await proxy.close()
    right = AtpService(make_config(port=held_port(), **leased), redis_url, clock=ManualClock(T))
    try:
        await right.start()
        r.xadd("atp:in:pos", F("e2", "RECEIPT", "A", "S1", 3, T + AHEAD_MS - 60_000).fields())  # never applied
        await wait_consumed(redis_url, ["atp:in:pos"])
        client = AtpClient(f"127.0.0.1:{right.port}")
        try:
            (a,) = await client.availability([("A", "S1")])
        finally:
            await client.close()
        letters = [fields[b"event_id"] for _, fields in r.xrange("atp:dlq")]
        assert letters == [b"e2"], letters  # e1 was applied: not told as refused
        assert a.on_hand == 4
    finally:
        await right.stop(grace_s=0.1)


async def test_a_fact_sent_to_its_owner_applied_by_a_clock_ahead_is_a_duplicate_there(redis_url: str) -> None:
    """A reader whose claimed entry's group another process owns sends the fact on (``fact_sender``:
    ``RecordEvents`` at the owner, judged by the owner's clock). The owner answers as the reader would
    for a group of its own (E8: the answer never depends on how groups are spread over processes): a
    fact applied already (by a process whose clock ran ahead) is a duplicate, not INVALID — which had
    the reader dead-letter an applied fact. A fact as far ahead and never applied is still INVALID (E7)."""
    applied, never = F("e1", "RECEIPT", "A", "S1", 4, T + AHEAD_MS - 60_000), F("e2", "RECEIPT", "A", "S1", 3,
                                                                              T + AHEAD_MS - 60_000)
    async with leased_client(redis_url, T + AHEAD_MS) as client:
        assert [r.outcome for r in await client.record_events([applied.pb()])] == [pb.FACT_OUTCOME_APPLIED]
    async with leased_client(redis_url, T) as client:
        results = await client.record_events([applied.pb(), never.pb()])
        (a,) = await client.availability([("A", "S1")])
    assert [r.outcome for r in results] == [pb.FACT_OUTCOME_DUPLICATE, pb.FACT_OUTCOME_INVALID], results
    assert a.on_hand == 4
