"""A group's taking whose answer is lost, and a lease lost while its group is recovered: neither may
leave the group held (renewed) with nothing serving it, nor free in no one's hands for a lease."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aredis
from redis.exceptions import ConnectionError as RedisConnectionError

from atp_service import AtpService
from atp_service.storage.leases import GroupLeases
from atp_service.storage.nodes import Call
from atp_service.tasks import cancel_and_wait
from tests.atp_service.app.test_lease_lost_mid_renewal import (
    lease_lapsed,
    recovery_held_back,
    served_as_held,
    start,
    stocked_group,
    taken_anew,
)
from tests.conftest import ServiceFactory

__all__ = ["start"]  # the fixture, used here


async def test_a_taking_granted_by_redis_whose_answer_is_lost_does_not_keep_the_group_from_everyone(
        start: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ACQUIRE ran in Redis (the lease and owner key are this process's) but its answer was lost (a
    timeout): the group is not held here, not served here, and — its lease live in Redis under this
    process's holder — not free to any balance, this one's included: nobody serves it for a whole lease."""
    group = 1
    service, client, membership, engine, sku = await stocked_group(start, group, 5)
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
    holder = await key_value(redis_url, membership.leases.key(group))
    assert holder is None or holder.decode() != membership.leases.holder or group in membership.leases.held, (
        "the lease granted in Redis is this process's yet not held here: nobody serves the group until it runs out")
    await served_again(service, client, group, sku, 5, "the group taken again")


async def test_a_lease_lost_while_its_group_is_recovered_leaves_it_neither_held_nor_served_then_taken_anew(
        start: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A renewal finds the lease lost while the balance recovers the group: it is dropped and given up;
    the recovery, once done, does not install it ('lost while it was recovered'); a later balance takes it."""
    group = 3
    service, client, membership, engine, sku = await stocked_group(start, group, 7)
    await membership._hand_over(group)
    recovering, go_on = recovery_held_back(monkeypatch, group)
    balancing = asyncio.create_task(membership.balance())
    await recovering.wait()
    assert group in membership.leases.held
    await lease_lapsed(redis_url, membership, group)
    assert await membership.renew() == ""
    assert group not in membership.leases.held, "a lease found lost is dropped"
    go_on.set()
    await balancing
    monkeypatch.undo()
    await asyncio.gather(*membership._work)
    assert served_as_held(service) and engine.actors[group].vacant
    await served_again(service, client, group, sku, 7, "the group taken anew")


async def test_a_taking_granted_after_its_give_back_is_given_back_by_the_next_balance(
        start: ServiceFactory, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The taking's answer lost, its give-back sent, and the ACQUIRE landing only after that RELEASE
    (which overtook it on another connection): Redis names this process's holder for the lease, no
    taking here holds it. The next balance gives it back (epoch-checked) rather than leave the group
    to no one — this process included — for a whole lease; a later one takes it."""
    group = 2
    service, client, membership, _, sku = await stocked_group(start, group, 4)
    leases = membership.leases
    epoch = await stray_lease(membership, group)
    await membership.balance()
    await leases.given_back()
    assert await key_value(redis_url, leases.key(group)) is None, "the stray lease is given back"
    assert await key_value(redis_url, leases.store.keys.owner(group)) == epoch.encode()  # the grant's epoch stands
    assert "no taking here holds it" in caplog.text
    assert service.metrics.registry.get_sample_value("atp_groups_given_up_total", {"why": "stray"}) == 1
    await served_again(service, client, group, sku, 4, "the group taken after its stray lease was given back")


async def test_a_stop_during_a_taking_whose_answer_is_lost_leaves_no_lease_behind(
        start: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop cancels the balance while its ACQUIRE is on its way; Redis grants it, and its answer is lost
    (a timeout). No balance comes after a stop to find the lease stray: the cancelled taking's give-back
    must send the RELEASE (epoch-checked) for a lost answer as for a grant, else the group is kept from
    every other process — nobody serving it — for a whole lease after this one stopped."""
    group = 0
    service, _, membership, _, _ = await stocked_group(start, group, 3)
    await membership._hand_over(group)
    nodes = membership.leases.store.nodes
    run_one = nodes.run_one
    ran, answer = asyncio.Event(), asyncio.Event()

    async def answer_lost_late(call: Call, extra_s: float = 0.0) -> Any:
        reply = await run_one(call, extra_s)
        if call.script is GroupLeases._ACQUIRE and not ran.is_set():
            ran.set()  # granted in Redis; its answer on its way, then lost
            await answer.wait()
            raise RedisConnectionError("answer lost (the test's)")
        return reply

    monkeypatch.setattr(nodes, "run_one", answer_lost_late)
    renewing, idle = membership._tasks
    await cancel_and_wait(idle)
    balancing = asyncio.create_task(membership.balance())
    membership._tasks = [renewing, balancing]  # the balance loop's turn a stop cancels
    await ran.wait()
    stopping = asyncio.create_task(service.stop(grace_s=0.1))
    await asyncio.wait([balancing])
    assert balancing.cancelled(), "the stop cancelled the taking"
    answer.set()
    await stopping
    assert await key_value(redis_url, membership.leases.key(group)) is None, (
        "the lease the cancelled taking was granted is given back, not left to run out after the stop")


async def test_a_stray_lease_found_at_a_stop_is_given_back_by_it(
        start: ServiceFactory, redis_url: str) -> None:
    """A taking's grant landed after its give-back (a stray lease under this process's name), and the
    process stops before its next balance: no balance will find it, so the stop itself gives it back
    (epoch-checked), rather than keep the group from every other process for a whole lease."""
    group = 2
    service, _, membership, _, _ = await stocked_group(start, group, 4)
    leases = membership.leases
    await stray_lease(membership, group)
    await service.stop(grace_s=0.1)
    assert await key_value(redis_url, leases.key(group)) is None, "the stray lease is given back by the stop"


async def stray_lease(membership: Any, group: int) -> str:
    """``group`` handed over, then granted to this process again by an ACQUIRE no taking here waits for (the
    late grant of a taking whose answer was lost): a stray lease. Its epoch."""
    await membership._hand_over(group)
    leases = membership.leases
    epoch: str = await leases._draw(group)
    keys = [leases.key(group), leases.store.keys.owner(group), leases.store.keys.fence(group)]
    granted = await leases.store.nodes.run_one(Call(GroupLeases._ACQUIRE, keys, [leases.holder, epoch,
                                                                                leases.lease_ms]))
    assert int(granted) >= 0 and group not in leases.held
    return epoch


async def served_again(service: AtpService, client: Any, group: int, sku: str, units: int, what: str) -> None:
    """``group`` taken again by balances (``what`` if it is not), served here as held, and its stock (``units``
    of ``sku`` at DC) read through it."""
    assert service.membership is not None and service.engine is not None
    await taken_anew(service.membership, group, what)
    assert served_as_held(service) and not service.engine.actors[group].vacant
    (position,) = await client.availability([(sku, "DC")])
    assert position.on_hand == units


async def key_value(redis_url: str, key: str) -> bytes | None:
    """``key``'s value in Redis now."""
    r = aredis.Redis.from_url(redis_url)
    try:
        value: bytes | None = await r.get(key)
        return value
    finally:
        await r.aclose()
