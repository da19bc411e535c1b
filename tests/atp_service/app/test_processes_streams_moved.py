"""A fact read from an input stream whose group its owner, as the reader knows it, no longer serves (the
group being handed over: its final snapshot still being written, its lease still held) must not hold
back the facts of the other groups that owner serves. The owner refuses a forwarded ``RecordEvents``
whole, ``GROUP_MOVED`` for the first such group: the reader took that for the owner failing, left every
fact of the call pending and skipped the owner (0.2 s growing to 5 s); the pending pass sent them
together again, refused again, for as long as the hand-over lasted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from tests.atp_service.app.test_processes import SHARDS, group_of, owned
from tests.atp_service.app.test_processes_streams import STREAMS, on_hand, on_hand_at_owner, reader_and_owner
from tests.atp_service.fact_helpers import F, wait_consumed
from tests.conftest import ServiceFactory, services_on
from tests.waiting import until


@pytest.fixture
async def start(redis_url: str) -> AsyncIterator[ServiceFactory]:
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS) as factory:
        yield factory


def pending(r: redis.Redis, stream: str) -> int:
    (group,) = [g for g in r.xinfo_groups(stream) if g["name"] == b"atp"]
    return int(group["pending"])


async def test_a_fact_of_a_group_its_owner_is_handing_over_holds_back_none_of_its_other_groups(
        start: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    running = await reader_and_owner(start)
    (reader, _), (owner, _) = running
    moving, staying = sorted(owned(owner))[:2]
    sku_moving = next(s for s in (f"mv-{i}" for i in range(256)) if group_of(s) == moving)
    sku_staying = next(s for s in (f"st-{i}" for i in range(256)) if group_of(s) == staying)
    assert owner.engine is not None and owner.membership is not None and reader.membership is not None
    actor = owner.engine.actors[moving]
    snapshot_written = asyncio.Event()
    checkpoint = actor.checkpoint

    async def slow_checkpoint(*args: Any, **kwargs: Any) -> Any:  # its final snapshot: a slow Redis
        await snapshot_written.wait()
        return await checkpoint(*args, **kwargs)

    monkeypatch.setattr(actor, "checkpoint", slow_checkpoint)
    handing = asyncio.ensure_future(owner.membership._hand_over(moving))
    try:
        await until(lambda: owner.engine is not None and owner.engine.actors[moving].vacant,
                    "the group no longer served by its owner")
        assert reader.membership.where(moving)[0] == f"127.0.0.1:{owner.port}", "its lease still the owner's"
        now = time.time()
        r = redis.Redis.from_url(redis_url)
        with r.pipeline(transaction=True) as pipe:  # one read: one batch, one call to the owner
            pipe.xadd(STREAMS[0], F("m", "RECEIPT", sku_moving, "DC", 5, int(now * 1000) - 1000).fields())
            pipe.xadd(STREAMS[0], F("s", "RECEIPT", sku_staying, "DC", 7, int(now * 1000) - 1000).fields())
            pipe.execute()

        async def staying_applied() -> bool:
            return await on_hand(owner, sku_staying) == 7 and pending(r, STREAMS[0]) == 1

        # Bounded by the hand-over, which lasts until the test ends it: no wait of the reader's passes it.
        await until(staying_applied, "the fact of the group still served applied and acknowledged", 15)
        assert not handing.done()
        assert reader.ingestor is not None and reader.ingestor._owners is not None
        assert reader.ingestor._owners.due(f"127.0.0.1:{owner.port}"), "the owner answered: not skipped"
    finally:
        snapshot_written.set()
        await handing
    await wait_consumed(redis_url, [STREAMS[0]])
    assert await on_hand_at_owner(running, sku_moving) == 5
