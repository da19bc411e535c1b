"""Leases on shard groups (``storage/leases.py``) on a real Redis Cluster: a lease keeps other
processes off a group while it is renewed; an owner paused past its lease loses the group to the
next process, and every write it sends afterwards is refused whole — nothing it acknowledged is
lost; a lease given back can be taken at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio

from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.leases import GroupLeases
from atp_service.storage.log import Fenced, LogStore
from atp_service.storage.nodes import Call, open_nodes
from atp_service.storage.records import number_of
from tests.atp_service.app.test_redis_lost_tail import restored, saved
from tests.waiting import until

LEASE_MS = 300


@pytest.fixture
async def stores(cluster_url: str) -> AsyncIterator[tuple[LogStore, LogStore]]:
    """Two processes' log stores on one keyspace of the cluster."""
    first, second = (LogStore(open_nodes(cluster_url, 5.0, cluster=True), "t:", pipeline_max=64) for _ in range(2))
    yield first, second
    for store in (first, second):
        await store.nodes.aclose()


async def test_a_live_lease_keeps_another_process_off_the_group(stores: tuple[LogStore, LogStore]) -> None:
    # A lease far longer than the test: no renewal depends on how busy the host is.
    a, b = GroupLeases(stores[0], "process-a", 60_000), GroupLeases(stores[1], "process-b", 60_000)
    assert await a.acquire(3)
    assert not await b.acquire(3)
    assert await a.renew() == {}
    assert not await b.acquire(3)
    await stores[0].submit(3, 1, b"written by its owner")


async def test_an_owner_paused_past_its_lease_is_fenced_and_loses_nothing_it_acknowledged(
        stores: tuple[LogStore, LogStore]) -> None:
    # The paused owner's lease is short; the next owner's outlives the test, whatever the host's pace.
    a, b = GroupLeases(stores[0], "process-a", LEASE_MS), GroupLeases(stores[1], "process-b", 60_000)
    assert await a.acquire(5)
    await stores[0].submit(5, 1, b"acknowledged before the pause")
    await asyncio.sleep(LEASE_MS * 2 / 1000)  # SIGSTOP: no renewal; Redis lets the lease run out
    assert await b.acquire(5)  # the next process takes the group: owner key raised to a new epoch
    assert number_of(b.held[5]) > number_of(a.held[5])
    with pytest.raises(Fenced):  # the paused owner wakes up and writes: refused whole
        await stores[0].submit(5, 2, b"written after the pause")
    taken_at = a.held[5]
    assert await a.renew() == {5: taken_at}  # and it learns the group is gone
    assert a.held[5] == taken_at, "held until its holder has stopped serving it"
    assert a.drop(5, taken_at) and 5 not in a.held
    assert not a.drop(5, taken_at), "dropped once"
    assert not await a.acquire(5)  # nor can it take the group back while the new owner's lease lives
    await stores[1].submit(5, 2, b"the new owner goes on")
    assert [d async for _, d in stores[1].entries_after(5, 0)] == [b"acknowledged before the pause",
                                                                   b"the new owner goes on"]


async def test_a_lease_given_back_is_taken_at_once_and_the_giver_is_fenced(
        stores: tuple[LogStore, LogStore]) -> None:
    a, b = GroupLeases(stores[0], "process-a", 60_000), GroupLeases(stores[1], "process-b", 60_000)
    assert await a.acquire(1)
    await a.release(1)
    assert 1 not in a.held
    assert await b.acquire(1)  # no wait for the minute-long lease to run out
    await a.release(1)  # a holder never gives back another's lease
    assert not await a.acquire(1)
    given_back_by_b = b.held[1]
    await b.release(1)
    assert await a.acquire(1)  # handed back again: taken with a newer epoch than b's
    assert number_of(a.held[1]) > number_of(given_back_by_b)
    with pytest.raises(Fenced):
        await stores[1].submit(1, 1, b"b's late write after it gave the group back")


def test_a_lease_has_a_length() -> None:
    with pytest.raises(ValueError, match="lease_ms"):
        GroupLeases(None, "p", 0)  # type: ignore[arg-type]


async def test_an_owner_outranked_while_away_takes_the_group_again_once_it_is_free(
        stores: tuple[LogStore, LogStore]) -> None:
    """A process whose lease ran out while another took the group and gave it back is told it
    was outranked (``Fenced``) — and then takes the free group with a new epoch, instead of being
    refused with its old one for ever (the group left with no owner)."""
    a, b = GroupLeases(stores[0], "process-a", LEASE_MS), GroupLeases(stores[1], "process-b", 60_000)
    assert await a.acquire(2)
    await asyncio.sleep(LEASE_MS * 2 / 1000)  # a paused: its lease runs out
    assert await b.acquire(2)
    taken_by_b = b.held[2]
    await b.release(2)  # b gives it back before a renews
    with pytest.raises(Fenced):
        await a.acquire(2)  # with the epoch it held: outranked
    assert await a.acquire(2)  # the group is free: a takes it with a newly drawn epoch
    assert number_of(a.held[2]) > number_of(taken_by_b)
    await stores[0].submit(2, 1, b"a owns the group again")


@pytest.fixture
async def leased(stores: tuple[LogStore, LogStore]) -> tuple[LogStore, LogStore]:
    for store in stores:
        store.leased = True
    return stores


async def test_a_group_taken_from_a_process_is_its_only_loss(leased: tuple[LogStore, LogStore]) -> None:
    a, b = GroupLeases(leased[0], "process-a", LEASE_MS), GroupLeases(leased[1], "process-b", 60_000)
    lost: list[int] = []
    leased[0].on_group_lost.append(lost.append)
    assert await a.acquire(1) and await a.acquire(2)
    await asyncio.sleep(LEASE_MS * 2 / 1000)  # a's leases run out; b takes group 2 only
    assert await b.acquire(2)
    assert await leased[0].still_owner(1)  # asked while settling a doubt of group 1: still its own
    assert not await leased[0].still_owner(2)
    assert lost == [2] and not leased[0].fenced, "one group lost, not the process's standing"
    assert not leased[0].is_fenced(1) and leased[0].is_fenced(2)
    await leased[0].submit(1, 1, b"group 1 goes on")


async def test_a_refusal_of_an_earlier_taking_does_not_lose_the_current_one(leased: tuple[LogStore, LogStore]) -> None:
    a = GroupLeases(leased[0], "process-a", 60_000)
    lost: list[int] = []
    leased[0].on_group_lost.append(lost.append)
    assert await a.acquire(4)
    first = a.held[4]
    await a.release(4)
    assert await a.acquire(4)  # taken again, at a newer epoch
    current, leased[0].epochs[4] = leased[0].epochs[4], first
    stale = leased[0].submit(4, 1, b"submitted under the first taking")  # still waiting to be sent
    leased[0].epochs[4] = current
    with pytest.raises(Fenced):
        await stale
    assert lost == [] and not leased[0].is_fenced(4), "the refusal was of the earlier taking"
    await leased[0].submit(4, 1, b"written under the current taking")


async def test_a_settle_asks_about_its_own_group_and_another_lost_group_is_lost_alone(
        stores: tuple[LogStore, LogStore]) -> None:
    """``still_owner`` (the settle of an append in doubt asks it, after its read) with leased groups:
    a group taken over is lost by itself — not the whole store, which would leave the
    process holding its other groups' leases while refusing every call for them — and a group given
    up while the read is on its way is no error (both found by ``python -m tests.sim --processes``)."""
    first, second = stores
    first.leased = second.leased = True
    a, b = GroupLeases(first, "process-a", 60_000), GroupLeases(second, "process-b", 60_000)
    assert await a.acquire(2) and await a.acquire(4) and await a.acquire(6)
    await a.release(4)  # as when its lease ran out: the store still claims the group
    assert await b.acquire(4)
    assert await first.still_owner(2)
    assert not first.fenced and not first.is_fenced(2)
    assert not await first.still_owner(4)
    assert first.is_fenced(4) and not first.fenced
    reading = asyncio.ensure_future(first.still_owner(2))
    await asyncio.sleep(0)  # the read is on its way
    first.drop(6)  # group 6 given up meanwhile
    assert await reading
    await first.submit(2, 1, b"group 2 is still a's")


async def test_a_taking_cancelled_while_redis_grants_it_gives_the_lease_back(redis_url: str) -> None:
    """A stop cancels a taking whose ACQUIRE is already on its way: Redis still grants it, so the
    process gives the lease back once granted instead of leaving the group to no one for a lease."""
    store = LogStore(open_nodes(redis_url, 5.0), "t:", pipeline_max=64)
    admin = redis.asyncio.Redis.from_url(redis_url)
    leases = GroupLeases(store, "process-a", 60_000)
    run_one, acquiring, answered = store.nodes.run_one, asyncio.Event(), asyncio.Event()

    async def paused_acquire(call: Call) -> Any:
        if call.script is not GroupLeases._ACQUIRE:
            return await run_one(call)
        await admin.client_pause(10_000, all=False)  # writes wait in Redis until the unpause
        acquiring.set()
        try:
            return await run_one(call)
        finally:
            answered.set()

    store.nodes.run_one = paused_acquire  # type: ignore[method-assign]
    try:
        taking = asyncio.create_task(leases.acquire(2))
        await acquiring.wait()
        taking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await taking
        await admin.execute_command("CLIENT", "UNPAUSE")  # the ACQUIRE runs now, and is granted
        await asyncio.wait_for(answered.wait(), 10)
        await asyncio.gather(*leases.giving_back)
        assert await admin.get(leases.key(2)) is None  # given back: another process may take it at once
        assert 2 not in leases.held
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
        await store.nodes.aclose()


async def _blocked_clients(admin: redis.asyncio.Redis, n: int) -> bool:
    """Whether ``n`` clients wait in Redis (``INFO clients``: a write held by ``CLIENT PAUSE`` counts)."""
    return int((await admin.info("clients"))["blocked_clients"]) >= n


def _awaits(task: asyncio.Task[Any], name: str) -> bool:
    """Whether ``task`` is suspended in a coroutine called ``name`` (its chain of awaits walked)."""
    coro: Any = task.get_coro()
    while coro is not None:
        if getattr(getattr(coro, "cr_code", None), "co_name", None) == name:
            return True
        coro = getattr(coro, "cr_await", None)
    return False


async def test_a_give_back_cancelled_while_redis_holds_it_still_lands(redis_url: str) -> None:
    """A stop's repeated cancellation reaches a RELEASE on its way (a cancelled recovery giving its
    lease back): the give-back is not cut short, so the group is free at once instead of left to
    no one until the lease runs out."""
    store = LogStore(open_nodes(redis_url, 5.0), "t:", pipeline_max=64)
    admin = redis.asyncio.Redis.from_url(redis_url)
    leases = GroupLeases(store, "process-a", 60_000)
    run_one, releasing = store.nodes.run_one, asyncio.Event()

    async def paused_release(call: Call) -> Any:
        if call.script is GroupLeases._RELEASE:
            await admin.client_pause(10_000, all=False)  # writes wait in Redis until the unpause
            releasing.set()
        return await run_one(call)

    try:
        assert await leases.acquire(4)
        store.nodes.run_one = paused_release  # type: ignore[method-assign]
        giving = asyncio.create_task(leases.release(4))
        await releasing.wait()
        await until(lambda: _blocked_clients(admin, 1), "the RELEASE written, waiting in Redis")
        giving.cancel()  # the first cancellation waits for the give-back; a stop repeats it (cancel_and_wait)
        # Seen, not slept on (a sleep passed a release that stopped waiting later than it): the cancellation taken,
        # the caller waits on for the give-back's end (``finish_uncancelled``).
        await until(lambda: _awaits(giving, "wait"), "the cancelled caller waiting for the give-back", 5)
        assert not giving.done()
        giving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await giving
        assert 4 not in leases.held  # never renewed again
        await admin.execute_command("CLIENT", "UNPAUSE")
        await asyncio.wait_for(leases.given_back(), 10)
        assert await admin.get(leases.key(4)) is None  # another process may take it at once
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
        await store.nodes.aclose()


async def test_a_taking_redis_lost_is_not_drawn_again_by_the_next_taker(
        stores: tuple[LogStore, LogStore], redis_cluster: EmbeddedCluster) -> None:
    """Defect: a taking drew its epoch from the claims key (the last drawn + 1). The cluster came back
    from data older than process A's taking of a group (every primary restarted from an older RDB): the
    lease, the owner key and the claims key all went back, so process B, taking the free group, drew A's
    epoch again, and A's writes landed as B's until A's next renewal found the lease B's. A taking is now
    drawn no lower than the time now (``scripts.DRAW_LUA``): B's epoch is above A's, A's writes refused."""
    primaries = [redis.asyncio.Redis(host="127.0.0.1", port=node.port) for node in redis_cluster.primaries]
    try:
        images = [await saved(primary) for primary in primaries]
        a, b = GroupLeases(stores[0], "process-a", 60_000), GroupLeases(stores[1], "process-b", 60_000)
        assert await a.acquire(6)
        for primary, image in zip(primaries, images, strict=True):
            await restored(primary, image)
        assert await b.acquire(6)  # A's lease is gone with the data: the group is free
    finally:
        for primary in primaries:
            await primary.aclose()
    assert number_of(b.held[6]) > number_of(a.held[6])
    with pytest.raises(Fenced):
        await stores[0].submit(6, 1, b"written by A after B took the group")
    await stores[1].submit(6, 1, b"B owns the group")


async def test_a_taking_draws_above_the_groups_own_owner_key(stores: tuple[LogStore, LogStore]) -> None:
    """Process A, its clock an hour ahead, took group 6 at an epoch of that time; then the claims key's
    node came back from older data (the claims key lower than group 6's owner key). Drawn from the claims
    key and the clocks alone, B's taking was refused FENCED by the owner key, and so was every retry,
    until real time passed A's clock: the group served by no one for an hour."""
    ahead = int(time.time() * 1000) + 3_600_000
    client = stores[1].client
    await client.set(stores[1].keys.owner(6), ahead)  # A's taking, its lease since run out
    await client.set(stores[1].keys.claims, 1)  # the claims key back at an old value
    b = GroupLeases(stores[1], "process-b", 60_000)
    assert await b.acquire(6)
    assert number_of(b.held[6]) > ahead
    await stores[1].submit(6, 1, b"B owns the group")
