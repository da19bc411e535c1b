"""One shard's trouble at the owner of several groups (its write in doubt, its Redis Cluster primary
down, its queue full) must hold back only that group's facts read from the input streams, not those
of the owner's other groups. The owner refuses a forwarded ``RecordEvents`` whole for one shard's
refusal: the reader took that for the owner failing, left every fact of the call pending and skipped
the owner (0.2 s growing to 5 s); the pending pass sent them together again, refused again, for as
long as that one shard's trouble lasted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from atp_service import AtpService
from reservation import ResourceExhausted
from tests.atp_service.app.test_processes import SHARDS, group_of, owned
from tests.atp_service.app.test_processes_streams import STREAMS, on_hand, on_hand_at_owner, reader_and_owner
from tests.atp_service.app.test_processes_streams_moved import pending
from tests.atp_service.fact_helpers import F, wait_consumed
from tests.conftest import ServiceFactory, services_on
from tests.waiting import until


@pytest.fixture
async def start(redis_url: str) -> AsyncIterator[ServiceFactory]:
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS) as factory:
        yield factory


def shed(owner: AtpService, group: int, monkeypatch: pytest.MonkeyPatch, trouble: list[bool]) -> None:
    """The group's shard sheds every message (SHARD_OVERLOADED: its queue full) while ``trouble[0]``."""
    assert owner.engine is not None
    actor = owner.engine.actors[group]
    submit = actor.submit

    def shedding(work: Any) -> asyncio.Future[Any]:
        if trouble[0]:
            raise ResourceExhausted(f"shard {group}: mailbox full (10000 waiting)")
        return submit(work)

    monkeypatch.setattr(actor, "submit", shedding)


def writes_fail(owner: AtpService, group: int, monkeypatch: pytest.MonkeyPatch, trouble: list[bool]) -> None:
    """Every append of the group's shard to its log fails (its Redis Cluster primary down) while
    ``trouble[0]``: the shard answers OUTCOME_UNKNOWN, then STORAGE_UNREACHABLE while it settles."""
    assert owner.engine is not None
    store = owner.engine._log
    submit = store.submit

    def failing(shard: int, seq: int, data: bytes, then: Callable[[], None] | None = None) -> asyncio.Future[None]:
        if shard != group or not trouble[0]:
            return submit(shard, seq, data, then)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        fut.set_exception(RedisConnectionError(f"the primary of group {group}'s slot is down"))
        if then is not None:
            loop.call_soon(then)  # as the store settles it: after the shard has it in flight
        return fut

    monkeypatch.setattr(store, "submit", failing)


@pytest.mark.parametrize("trouble_of", [shed, writes_fail])
async def test_one_shard_s_trouble_at_the_owner_holds_back_none_of_its_other_groups(
        start: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch,
        trouble_of: Callable[[AtpService, int, pytest.MonkeyPatch, list[bool]], None]) -> None:
    running = await reader_and_owner(start)
    (reader, _), (owner, _) = running
    troubled, healthy = sorted(owned(owner))[:2]
    sku_troubled = next(s for s in (f"tr-{i}" for i in range(256)) if group_of(s) == troubled)
    sku_healthy = [s for s in (f"ok-{i}" for i in range(256)) if group_of(s) == healthy][:2]
    address = f"127.0.0.1:{owner.port}"
    trouble = [True]
    trouble_of(owner, troubled, monkeypatch, trouble)
    now = int(time.time() * 1000)
    r = redis.Redis.from_url(redis_url)
    try:
        with r.pipeline(transaction=True) as pipe:  # one read: one batch, one call to the owner
            pipe.xadd(STREAMS[0], F("t", "RECEIPT", sku_troubled, "DC", 5, now - 1000).fields())
            pipe.xadd(STREAMS[0], F("h1", "RECEIPT", sku_healthy[0], "DC", 7, now - 1000).fields())
            pipe.execute()

        async def healthy_applied(sku: str, quantity: int) -> bool:
            return await on_hand(owner, sku) == quantity and pending(r, STREAMS[0]) == 1

        # Bounded by the trouble, which lasts until the test ends it: no wait of the reader's passes it.
        await until(lambda: healthy_applied(sku_healthy[0], 7), "the healthy group's fact applied and acknowledged",
                    15)
        # The troubled fact, left pending, is sent again alone by the reader's passes and refused again:
        # the owner answered, so a fact of its healthy group read meanwhile is not held back either.
        r.xadd(STREAMS[0], F("h2", "RECEIPT", sku_healthy[1], "DC", 3, now - 1000).fields())
        await until(lambda: healthy_applied(sku_healthy[1], 3), "a later fact of the healthy group applied", 15)
        assert reader.ingestor is not None and reader.ingestor._owners is not None
        assert reader.ingestor._owners.due(address), "the owner answered: not skipped"
        assert await on_hand(owner, sku_troubled) == 0
    finally:
        trouble[0] = False
    await wait_consumed(redis_url, [STREAMS[0]])
    assert await on_hand_at_owner(running, sku_troubled) == 5
