"""Leased groups under faults of ownership itself: a killed process's membership outliving its
leases, a Redis that may evict leases, a give-back landing after the group was taken again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import redis.asyncio as aredis

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, EmbeddedRedis
from atp_service.app import membership as membership_module
from atp_service.app.keyspace import StartupError
from atp_service.app.membership import plan_balance
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.leases import GroupLeases
from atp_service.storage.log import LogStore
from atp_service.storage.nodes import open_nodes
from atp_service.tasks import cancel_and_wait
from tests.atp_service.redis_proxy import HoldingProxy
from tests.conftest import ServiceFactory, services_on
from tests.conftest import test_config as make_config
from tests.ports import held_port
from tests.waiting import until

LEASED = {"ownership": "leases", "lease_ms": 2000, "shards": 4, "input_streams": ()}


def owned(service: AtpService) -> set[int]:
    assert service.membership is not None and service.engine is not None
    return {g for g in service.membership.leases.held if not service.engine.actors[g].vacant}


@pytest.fixture
async def start(redis_url: str) -> AsyncIterator[ServiceFactory]:
    async with services_on(redis_url, **LEASED) as start:
        yield start


async def test_a_killed_process_stops_counting_as_a_member_when_its_leases_run_out(
        start: ServiceFactory, redis_url: str) -> None:
    """Registered for two leases, a killed process still counted as a member a lease after its leases
    ran out: the others, at their share, left its groups to no one meanwhile."""
    survivor, _ = await start(port=held_port(), host="127.0.0.1")
    victim, _ = await start(port=held_port(), host="127.0.0.1")
    await until(lambda: len(owned(survivor)) == len(owned(victim)) == 2, "the groups shared", 60)
    assert victim.membership is not None
    leases = [victim.membership.leases.key(g) for g in owned(victim)]
    # kill -9, as Redis sees it: no renewal, no hand-over (each cancelled until it ended: one cancel can be lost)
    await asyncio.gather(*(cancel_and_wait(task) for task in victim.membership._tasks))
    r = aredis.Redis.from_url(redis_url)
    try:
        holder = victim.membership.leases.holder
        await until(lambda: _none_held_by(r, leases, holder), "the killed process's leases run out", 30)
        seconds, micros = await r.time()
        now_ms = seconds * 1000 + micros // 1000
        registered_until = await r.zscore(victim._log.keys.members, holder)  # type: ignore[union-attr]
        assert registered_until is None or registered_until <= now_ms, "still a member once its leases ran out"
    finally:
        await r.aclose()
    await until(lambda: len(owned(survivor)) == 4, "the killed process's groups taken", 30)


async def _none_held_by(r: aredis.Redis, keys: list[str], holder: str) -> bool:
    return all(value != holder.encode() for value in await r.mget(keys))


async def test_a_late_give_back_of_an_earlier_taking_spares_the_current_lease(
        redis_url: str, redis_server: EmbeddedRedis) -> None:
    """A RELEASE whose answer was lost landed after the same process took the group again, and
    deleted that taking's lease: another process could take the group while it still answered.

    The answer is lost by a reset connection, not a short timeout: a 0.3 s one, meant for the held
    RELEASE alone, ended whichever call a stalled host (or Redis) kept waiting past it first."""
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    a_store = LogStore(open_nodes(await proxy.start(), 30.0), "t:", pipeline_max=64)
    b_store = LogStore(open_nodes(redis_url, 30.0), "t:", pipeline_max=64)
    r = aredis.Redis.from_url(redis_url)
    a, b = GroupLeases(a_store, "process-a", 300), GroupLeases(b_store, "process-b", 60_000)
    try:
        assert await a.acquire(2)
        await a.release(2)  # the RELEASE script loaded in Redis
        assert await a.acquire(1)
        proxy.hold(GroupLeases._RELEASE.sha.encode(), reset=True)
        with pytest.raises(STORAGE_ERRORS):  # its answer lost: it may yet land
            await a.release(1)
        proxy.hold()
        await until(lambda: _gone(r, a.key(1)), "the lease run out", 30)
        # The taking that must be spared outlives the test, whatever the host's pace: at 300 ms it could
        # run out by itself before the checks below, and read as deleted.
        a.lease_ms = 60_000
        assert await a.acquire(1)  # taken again, by the same process
        await proxy.land(proxy.held[0])  # the earlier give-back lands now
        assert await r.get(a.key(1)) == b"process-a", "the current taking's lease was deleted"
        assert not await b.acquire(1)
    finally:
        await r.aclose()
        await proxy.close()
        await a_store.nodes.aclose()
        await b_store.nodes.aclose()


async def _gone(r: aredis.Redis, key: str) -> bool:
    return not await r.exists(key)


async def test_leased_groups_refuse_a_redis_that_may_evict_keys_with_a_time_to_live(redis_url: str) -> None:
    """Leases are the keys with a time to live: under a ``volatile-*`` policy memory pressure evicts
    exactly those, and another process takes a group its owner still answers for."""
    r = aredis.Redis.from_url(redis_url)
    await r.config_set("maxmemory-policy", "volatile-lru")
    service = AtpService(make_config(**LEASED, port=held_port(), host="127.0.0.1"), redis_url)
    try:
        with pytest.raises(StartupError, match=r"maxmemory-policy is volatile-lru: with ownership = leases"):
            await service.start()
    finally:
        await r.config_set("maxmemory-policy", "noeviction")  # first: the session's Redis is every test's
        await r.aclose()
        await service.stop()


def test_a_process_holding_leases_counts_as_live_though_its_registration_lapsed() -> None:
    """A member's registration lapsed (one slow call) while it still holds its groups: counted out,
    it made the others' share the whole keyspace — they took every free group, then handed them
    back once it registered again, each hand-over a drain, a snapshot and a recovery."""
    routes = {0: ("a", 1), 1: ("a", 1), 2: ("b", 2), 3: ("b", 2)}  # groups 4 and 5 free (handed over)
    give, take = plan_balance("a", 6, ["a|token"], {0, 1}, routes, ())
    assert give is None and len(take) == 1  # a's share of 6 over two live processes: 3


async def test_leases_taken_by_a_slow_first_share_are_renewed_while_it_is_recovered(
        start: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first share's groups are recovered one after another before the start returns; renewing
    began only after the last, so the leases taken first ran out while the rest were recovered (and
    another process could take them while this one was about to serve them).

    The last group's recovery here lasts until a renewal has extended its lease and those of the
    groups taken before it: one that never came while the start ran (waited for at most a lease,
    past which those would have run out). Events, not a recovery outlasting a 1 s lease: a host
    stalled longer than such a lease lost one to Redis's clock, whatever the service did."""
    lease_ms = 9_000  # a stall would have to outlast two thirds of it to cost a lease
    recover = membership_module.recover_shard  # type: ignore[attr-defined]
    renew = GroupLeases.renew
    extended: list[set[int]] = []  # the groups each renewal extended
    recovered: list[int] = []

    async def renewing(self: GroupLeases) -> set[int]:
        lost = await renew(self)
        extended.append(set(self.renewed))
        return lost

    async def slow_recovery(store: Any, group: int, *args: Any, **kwargs: Any) -> Any:
        answer = await recover(store, group, *args, **kwargs)
        recovered.append(group)
        if len(recovered) == 3:
            await until(lambda: any(groups >= {0, 1, 2} for groups in extended),
                        f"every lease renewed while group {group} was recovered", lease_ms / 1000)
        return answer

    monkeypatch.setattr(GroupLeases, "renew", renewing)
    monkeypatch.setattr(membership_module, "recover_shard", slow_recovery)
    service, _ = await start(lease_ms=lease_ms, shards=3, port=held_port(), host="127.0.0.1")
    assert service.membership is not None
    assert sorted(recovered) == [0, 1, 2] and owned(service) == {0, 1, 2}
    r = aredis.Redis.from_url(redis_url)
    try:
        holders = await r.mget([service.membership.leases.key(g) for g in range(3)])
    finally:
        await r.aclose()
    assert holders == [service.membership.leases.holder.encode()] * 3, "a lease ran out during the start"


async def test_a_process_whose_lease_lapsed_unrenewed_does_not_redirect_callers_to_itself(
        start: ServiceFactory) -> None:
    """Renewals failing, a process stops answering for its groups once its lease may have run out,
    but it still named itself their owner: a caller following the redirect came straight back, as
    many times as its deadline allowed. It now says no one serves the group (retry later)."""
    service, client = await start(port=held_port(), host="127.0.0.1", shards=1)
    assert service.membership is not None and service.engine is not None
    await until(lambda: owned(service) == {0}, "the group taken", 30)
    # renewals that no longer get through (each cancelled until it ended: one cancel can be lost)
    await asyncio.gather(*(cancel_and_wait(task) for task in service.membership._tasks))
    service.engine.actors[0].lease_until = 0.0  # its last renewal older than a lease
    with pytest.raises(grpc.aio.AioRpcError) as moved:
        await client.stub.Reserve(pb.ReserveRequest(reservation_id="r", lines=[pb.Line(sku="A", location="DC",
                                                                                          quantity=1)]),
                                  metadata=(("atp-routing", "redirect"),), timeout=5)
    assert dict(moved.value.trailing_metadata() or ())["atp-moved"] == "0 ", "redirected to itself"
    with pytest.raises(grpc.aio.AioRpcError) as read:
        await client.stub.GetAvailability(pb.GetAvailabilityRequest(keys=[pb.PositionKey(sku="A", location="DC")]),
                                          metadata=(("atp-routing", "redirect"),), timeout=5)
    assert dict(read.value.trailing_metadata() or ())["atp-moved"] == "0 ", "a read redirected to itself"
    assert service.membership.table().routes[0].address == "", "GetRouting names it the owner"


async def test_a_group_unanswered_past_its_lease_is_answered_again_once_a_renewal_lands(
        start: ServiceFactory) -> None:
    """Past its deadline by its own clock (a pause, renewals failing), a process refuses the group's calls;
    a renewal that then lands and finds the lease still its own (nobody took it meanwhile, or Redis came
    back from older data naming it again) extends the deadline, and the group is answered again
    (``Membership._renew_leases``) — the behaviour the simulation's ``SimMembership.renew`` models. A lease
    of a minute: Redis's own copy cannot run out however slow the host."""
    service, client = await start(port=held_port(), host="127.0.0.1", shards=1, lease_ms=60_000)
    assert service.membership is not None and service.engine is not None
    await until(lambda: owned(service) == {0}, "the group taken", 30)
    await asyncio.gather(*(cancel_and_wait(task) for task in service.membership._tasks))
    service.engine.actors[0].lease_until = 0.0  # its last renewal older than a lease, by its own clock
    request = pb.GetAvailabilityRequest(keys=[pb.PositionKey(sku="A", location="DC")])
    with pytest.raises(grpc.aio.AioRpcError) as moved:
        await client.stub.GetAvailability(request, metadata=(("atp-routing", "redirect"),), timeout=5)
    assert dict(moved.value.trailing_metadata() or ())["atp-moved"] == "0 "
    assert await service.membership.renew() == ""
    assert owned(service) == {0}
    await client.stub.GetAvailability(request, metadata=(("atp-routing", "redirect"),), timeout=5)
