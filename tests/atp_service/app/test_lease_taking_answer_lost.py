"""A group's taking whose answer is lost, and a lease lost while its group is recovered: neither may
leave the group held (renewed) with nothing serving it, nor free in no one's hands for a lease."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aredis
from redis.exceptions import ConnectionError as RedisConnectionError

from atp_service import AtpService, free_port
from atp_service.app import membership as membership_module
from atp_service.storage.leases import GroupLeases
from atp_service.storage.nodes import Call
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory, services_on
from tests.waiting import until

SHARDS = 4


@pytest.fixture
async def start(redis_url: str) -> AsyncIterator[ServiceFactory]:
    # Long leases and no balancing of its own: the balances below are the test's.
    async for start in services_on(redis_url, ownership="leases", lease_ms=600_000, balance_ms=200_000,
                                   shards=SHARDS, input_streams=()):
        yield start


def served_as_held(service: AtpService) -> bool:
    assert service.membership is not None and service.engine is not None
    held = set(service.membership.leases.held)
    return held == {g for g in range(SHARDS) if not service.engine.actors[g].vacant}


async def test_a_taking_granted_by_redis_whose_answer_is_lost_does_not_keep_the_group_from_everyone(
        start: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ACQUIRE ran in Redis (the lease and owner key are this process's) but its answer was lost (a
    timeout): the group is not held here, not served here, and — its lease live in Redis under this
    process's holder — not free to any balance, this one's included: nobody serves it for a whole lease."""
    service, client = await start(port=free_port(), host="127.0.0.1")
    membership, engine = service.membership, service.engine
    assert membership is not None and engine is not None
    group = 1
    sku = next(f"k{i}" for i in range(64) if engine.place(f"k{i}") == group)
    await client.record_events([receipt("in-1", sku, "DC", 5)])
    await membership._hand_over(group)  # free now, as after its owner handed it over
    assert group not in membership.leases.held and engine.actors[group].vacant
    nodes = membership.leases.store.nodes
    run_one = nodes.run_one
    lost_once: list[int] = []

    async def answer_lost(call: Call, extra_s: float = 0.0) -> Any:
        reply = await run_one(call, extra_s)
        if call.script is GroupLeases._ACQUIRE and not lost_once:
            lost_once.append(1)
            raise RedisConnectionError("answer lost (the test's)")
        return reply

    monkeypatch.setattr(nodes, "run_one", answer_lost)
    with pytest.raises(RedisConnectionError):
        await membership.balance()
    monkeypatch.undo()
    assert lost_once
    await membership.leases.given_back()  # any give-back under way ends first
    r = aredis.Redis.from_url(redis_url)
    try:
        holder = await r.get(membership.leases.key(group))
    finally:
        await r.aclose()
    assert holder is None or holder.decode() != membership.leases.holder or group in membership.leases.held, (
        "the lease granted in Redis is this process's yet not held here: nobody serves the group until it runs out")

    async def served() -> bool:
        await membership.balance()
        return group in membership.leases.held
    await until(served, "the group taken again", 10)
    assert served_as_held(service)
    (position,) = await client.availability([(sku, "DC")])
    assert position.on_hand == 5


async def test_a_lease_lost_while_its_group_is_recovered_leaves_it_neither_held_nor_served_then_taken_anew(
        start: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A renewal finds the lease lost while the balance recovers the group: it is dropped and given up;
    the recovery, once done, does not install it ('lost while it was recovered'); a later balance takes it."""
    service, client = await start(port=free_port(), host="127.0.0.1")
    membership, engine = service.membership, service.engine
    assert membership is not None and engine is not None
    group = 3
    sku = next(f"k{i}" for i in range(64) if engine.place(f"k{i}") == group)
    await client.record_events([receipt("in-1", sku, "DC", 7)])
    await membership._hand_over(group)
    recovering, go_on = asyncio.Event(), asyncio.Event()
    recover = membership_module.recover_shard

    async def held_back(store: Any, shard: int, limits: Any) -> Any:
        if shard == group:
            recovering.set()
            await go_on.wait()
        return await recover(store, shard, limits)

    monkeypatch.setattr(membership_module, "recover_shard", held_back)
    balancing = asyncio.create_task(membership.balance())
    await recovering.wait()
    assert group in membership.leases.held
    r = aredis.Redis.from_url(redis_url)
    try:
        await r.delete(membership.leases.key(group))  # lapsed, as while Redis did not answer
    finally:
        await r.aclose()
    assert await membership.renew() == ""
    assert group not in membership.leases.held, "a lease found lost is dropped"
    go_on.set()
    await balancing
    monkeypatch.undo()
    await asyncio.gather(*membership._work)
    assert served_as_held(service) and engine.actors[group].vacant

    async def taken_anew() -> bool:
        await membership.balance()
        return group in membership.leases.held
    await until(taken_anew, "the group taken anew", 10)
    assert served_as_held(service)
    (position,) = await client.availability([(sku, "DC")])
    assert position.on_hand == 7
