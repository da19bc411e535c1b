"""``RoutedClient`` bounds: redirects followed a bounded number of times, a call retried after its group
moved holds once (R5), and a client closed with calls in flight leaves no channel open."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from atp_client import Retryable, RoutedClient, _routed, place
from atp_client._routed import MAX_HOPS
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge.routing import Route, RoutingTable
from reservation import Moved
from tests.atp_client.test_routed import Paused
from tests.atp_service.app.test_processes import SHARDS, group_of, not_owner_of, owned, owner_of, processes
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.edge.test_forward import InHand, Relay
from tests.atp_service.edge.test_routing import advertised, stock
from tests.conftest import ServiceFactory, services_on
from tests.waiting import until


async def paused_seed(start_service: ServiceFactory) -> tuple[Paused, str]:
    """A service, stocked, whose routing table names one address for every group: a proxy in front of it
    that can be paused (``Paused``). (The proxy, its address.)"""
    service, at_service = await start_service()
    seed = Paused(advertised(service))
    seed_address = await seed.start()
    shards = service.config.shards
    service._servicer.routing = lambda: RoutingTable(shards, seed_address, tuple(
        Route(g, seed_address, 1) for g in range(shards)))
    await stock(at_service, service.clock.now_ms())
    return seed, seed_address


async def test_a_client_closed_while_a_call_waits_for_the_routing_table_leaves_no_channel_open(
        start_service: ServiceFactory) -> None:
    """One call asks a paused seed for the routing table; a second waits for that asking. The client is
    closed: the first call ends with its channel, and the second, taking the table's asking over, must
    not open a new channel to the seed that nothing closes any more (nor go on to reserve)."""
    seed, seed_address = await paused_seed(start_service)
    routed = RoutedClient(seed_address, timeout_s=30.0)
    seed.running.clear()
    first = asyncio.ensure_future(routed.reserve("r1", [("A", "L", 1)]))
    await asyncio.wait_for(seed.held.wait(), 10)  # the first call asks the paused seed for the table
    second = asyncio.ensure_future(routed.reserve("r2", [("A", "L", 1)]))
    await asyncio.sleep(0)  # the second call waits for the first one's asking
    await routed.close()
    seed.running.set()
    outcomes = await asyncio.gather(first, second, return_exceptions=True)
    assert not any(isinstance(o, pb.ReserveResponse) for o in outcomes), f"a call went on after close: {outcomes}"
    assert routed._clients.values() == [], "a channel opened after close(), never closed"
    with pytest.raises(grpc.aio.UsageError):
        await routed.get_reservation("r1")
    assert routed._clients.values() == []


async def test_redirects_back_and_forth_are_followed_a_bounded_number_of_times(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes each redirecting the group's calls to the other (their views of a hand-over
    lagging): the client follows ``MAX_HOPS`` redirects, asking for the table at most once each, and
    raises the last ``GROUP_MOVED`` — never loops, nothing applied."""
    one, _ = await start_service()
    two, _ = await start_service(key_prefix="atp-b:")
    addresses = advertised(one), advertised(two)
    shards = one.config.shards
    group = place("A", shards)
    asked: list[str] = []
    for me, other in ((one, addresses[1]), (two, addresses[0])):
        me._servicer.routing = lambda me=me, other=other: asked.append("table") or RoutingTable(  # type: ignore[misc]
            shards, f"127.0.0.1:{me.port}", tuple(Route(g, other, 1) for g in range(shards)))

        async def moved(*_args: Any, other: str = other, **_kw: Any) -> Any:
            asked.append("reserve")
            raise Moved(group, other, epoch=2)

        assert me.engine is not None
        monkeypatch.setattr(me.engine, "reserve", moved)
    async with RoutedClient(addresses[0], timeout_s=30.0) as routed:
        await routed.refresh()
        asked.clear()
        with pytest.raises(Retryable) as refused:
            await routed.reserve("r1", [("A", "L", 1)])
    assert refused.value.reason == "GROUP_MOVED", refused.value
    assert asked.count("reserve") == MAX_HOPS + 1, asked
    assert asked.count("table") <= MAX_HOPS * len(addresses), asked


async def test_a_call_in_flight_on_a_channel_dropped_from_the_pool_is_answered_then_the_channel_closed(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``RoutedClient`` keeps channels to ``max_clients`` processes (32); a call to one more dropped one and
    closed it, calls in flight on it or not: a Reserve in the hands of the owner there was cancelled once the
    close's grace (5 s) ran out — the caller raised ``asyncio.CancelledError``, not even a refusal, while the
    owner made the reservation (R7: in doubt, never told so). The call is answered; the channel it used is
    closed once it has been, and the pool holds ``max_clients`` channels."""
    monkeypatch.setattr(_routed, "CLOSE_GRACE_S", 0.0, raising=False)  # whatever grace a drop gave: none is needed
    service, client = await start_service()
    address = advertised(service)
    await stock(client, service.clock.now_ms())
    shards = service.config.shards
    group = place("A", shards)
    assert place("B", shards) != group
    owners = [Relay(address), Relay(address)]  # two processes: the owner of A's group, the owner of the others
    at_a, at_others = [await owner.start() for owner in owners]
    service._servicer.routing = lambda: RoutingTable(shards, address, tuple(
        Route(g, at_a if g == group else at_others, 1) for g in range(shards)))
    assert service.engine is not None
    in_hand = InHand(service.engine.reserve)
    monkeypatch.setattr(service.engine, "reserve", in_hand)
    async with RoutedClient(address, timeout_s=30.0, max_clients=1) as routed:
        await routed.refresh()
        call = asyncio.ensure_future(routed.reserve("r1", [("A", "L", 1)]))
        await asyncio.wait_for(in_hand.entered.wait(), 10)
        in_use = routed._clients.get(at_a)
        assert in_use is not None
        (position,) = await routed.availability([("B", "L")])  # at the other process: a's channel dropped
        assert position.on_hand == 10 and routed._clients.values() != [in_use]
        in_hand.go.set()
        (held,) = await asyncio.gather(call, return_exceptions=True)
        assert isinstance(held, pb.ReserveResponse), f"the call on the dropped channel ended {held!r}"
        assert held.state == pb.RESERVATION_STATE_HELD
        await asyncio.gather(*routed._closing)
        assert in_use.channel.get_state() == grpc.ChannelConnectivity.SHUTDOWN, "the dropped channel left open"
        assert len(routed._clients) == 1


@pytest.fixture
async def start_leased(redis_url: str) -> AsyncIterator[ServiceFactory]:
    """Processes sharing one keyspace by leases, balancing every 200 ms (5 s leases: none lapses here)."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=()) as start:
        yield start


@pytest.mark.parametrize("lands", ["before-the-move", "after-the-move"])
async def test_a_reserve_that_timed_out_at_its_owner_and_is_retried_after_the_group_moved_holds_once(
        start_leased: ServiceFactory, monkeypatch: pytest.MonkeyPatch, lands: str) -> None:
    """A Reserve held in its owner's hands runs out of the caller's deadline (in doubt, R8); it lands
    there after all, unacknowledged — before the owner stops and hands its groups over, or only after
    the other process took them; the caller retries with the same id through the same client: the
    answer is one reservation, held once (R5, R7) — not a second hold at the new owner, nor lost."""
    running = await processes(start_leased, 2)
    sku = "A"
    owner, staying = owner_of(running, sku), not_owner_of(running, sku)
    await staying[1].record_events([receipt("in-A", sku, "DC", 10)])
    assert owner[0].engine is not None
    in_hand = InHand(owner[0].engine.reserve)
    monkeypatch.setattr(owner[0].engine, "reserve", in_hand)
    async with RoutedClient([f"127.0.0.1:{s.port}" for s, _ in running], timeout_s=30.0) as routed:
        await routed.refresh()
        routed.timeout_s = 0.5  # held in hand until let go: certainly past any deadline
        with pytest.raises(Retryable) as timed_out:
            await routed.reserve("r1", [(sku, "DC", 3)], ttl_seconds=600)
        assert timed_out.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, timed_out.value
        if lands == "before-the-move":
            in_hand.go.set()
            await in_hand.landed[0]
        await owner[0].stop(grace_s=0.1)
        await until(lambda: owned(staying[0]) == set(range(SHARDS)), "the staying process owns every group", 60)
        routed.timeout_s = 30.0
        again = await routed.reserve("r1", [(sku, "DC", 3)], ttl_seconds=600)
        assert routed.routes is not None and routed.routes.owner(group_of(sku)) == f"127.0.0.1:{staying[0].port}"
        if lands == "after-the-move":
            in_hand.go.set()
            await asyncio.gather(in_hand.landed[0], return_exceptions=True)  # refused (fenced) or not: no hold
        replay = await routed.reserve("r1", [(sku, "DC", 3)], ttl_seconds=600)
        assert replay.replayed, replay
        replay.replayed = again.replayed
        assert replay == again  # R5: the same answer
    assert again.state == pb.RESERVATION_STATE_HELD, again
    assert [line.held for line in (await staying[1].get_reservation("r1")).lines] == [3]
    (position,) = await staying[1].availability([(sku, "DC")])
    assert (position.on_hand, position.reserved) == (10, 3), position


def _routing_tasks() -> list[asyncio.Task[Any]]:
    """Tasks of a ``RoutedClient`` still running: a table's asking, or a wait for its lock."""
    return [t for t in asyncio.all_tasks() if not t.done() and
            getattr(t.get_coro(), "__qualname__", "").split(".")[-1] in ("_routing_of", "acquire")]


async def test_calls_cancelled_while_asking_or_waiting_for_the_routing_table_leave_nothing_running(
        start_service: ServiceFactory) -> None:
    """The caller cancels a call asking a paused seed for the table, and another waiting for that asking:
    no asking and no wait for the lock goes on, and the next call asks for the table itself."""
    seed, seed_address = await paused_seed(start_service)
    async with RoutedClient(seed_address, timeout_s=30.0) as routed:
        seed.running.clear()
        asking = asyncio.ensure_future(routed.reserve("r1", [("A", "L", 1)]))
        await asyncio.wait_for(seed.held.wait(), 10)
        waiting = asyncio.ensure_future(routed.reserve("r2", [("A", "L", 1)]))
        await asyncio.sleep(0)
        assert len(_routing_tasks()) == 2  # the asking of the paused seed, the wait for its lock
        for call in (waiting, asking):
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        assert _routing_tasks() == []
        seed.running.set()
        held = await routed.reserve("r3", [("A", "L", 1)])
    assert held.state == pb.RESERVATION_STATE_HELD
    assert _routing_tasks() == []


async def test_availability_refused_for_one_group_leaves_no_read_of_another_running(
        start_service: ServiceFactory) -> None:
    """``availability`` reads each group at its owner at once. One owner is gone (its connections
    refused): the call raises its refusal — and the read of another group, at an owner that is paused,
    must not go on in the background after the caller has its answer, for as long as its deadline."""
    service, _ = await start_service()
    address = advertised(service)
    paused = Paused(address)
    paused_address = await paused.start()
    gone = Relay(address)
    gone_address = await gone.start()
    await gone.cut()
    shards = service.config.shards
    assert place("A", shards) != place("B", shards)
    owners = {place("A", shards): gone_address, place("B", shards): paused_address}
    service._servicer.routing = lambda: RoutingTable(shards, address, tuple(
        Route(g, owners.get(g, address), 1) for g in range(shards)))
    async with RoutedClient(address, timeout_s=30.0) as routed:
        await routed.refresh()
        paused.running.clear()
        with pytest.raises(Retryable) as refused:
            await routed.availability([("B", "L"), ("A", "L")])
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
        left = [t for t in asyncio.all_tasks()
                if not t.done() and t.get_coro().__qualname__.startswith("RoutedClient.availability")]
        paused.running.set()
    assert left == [], "a read went on after availability() raised"
