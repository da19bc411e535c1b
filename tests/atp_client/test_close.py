"""Closing a client while calls are in flight and a closer is cancelled, against a real service: the closer
that was not cancelled returns (no ``CancelledError`` it did not ask for), and every channel is closed."""

from __future__ import annotations

import asyncio

from atp_client import AtpClient, RoutedClient, place
from atp_service.edge.routing import Route, RoutingTable
from tests.atp_client import test_routed
from tests.atp_service.edge.test_routing import advertised, stock
from tests.conftest import ServiceFactory
from tests.waiting import until

silent = test_routed.silent  # the fixture: processes that accept connections and never answer


async def test_a_routed_close_beside_a_cancelled_one_returns_and_closes_a_dropped_channel(
        start_service: ServiceFactory, silent: list[str]) -> None:
    """A channel dropped from the pool (``max_clients``) closes in a task of its own (once its calls end, a
    channel with calls in flight). ``close()`` gathered those tasks in its caller: a caller cancelled (a timeout
    around the close) cancelled them too, which raised ``CancelledError`` into every other caller of ``close()``
    — not cancelled themselves — and left the channel half closed (gRPC's "closing", never destroyed): its call
    ran on to its deadline, its connection open for as long as the process lived."""
    service, client = await start_service()
    address = advertised(service)
    await stock(client, service.clock.now_ms())
    group, owner = place("A", service.config.shards), silent[0]
    service._servicer.routing = lambda: RoutingTable(service.config.shards, address, tuple(
        Route(g, owner if g == group else address, 1) for g in range(service.config.shards)))
    routed = RoutedClient(address, timeout_s=60.0, max_clients=1)  # 60 s: the in-flight call's deadline, not a pace
    assert (await routed.refresh()).owner(group) == owner
    held = asyncio.ensure_future(routed.reserve("r1", [("A", "L", 1)]))  # sent to the silent owner: never answered
    await until(lambda: routed._clients.get(owner) is not None, "the reserve sent to the silent owner")
    # To the process that answers, dropping the silent owner's channel (one kept) as the call is sent.
    asked = asyncio.ensure_future(routed.get_reservation("nobody"))
    await until(lambda: routed._draining, "the silent owner's channel dropped, its call in flight")
    first, second = asyncio.ensure_future(routed.close()), asyncio.ensure_future(routed.close())
    await asyncio.sleep(0)  # both closes begun (asyncio runs ready tasks in order)
    first.cancel()
    await second  # not cancelled: must return, not raise CancelledError
    assert held.done(), "the dropped channel was closed, its call ended"
    await asyncio.gather(first, held, asked, return_exceptions=True)
    assert first.cancelled()


async def test_a_close_beside_a_cancelled_one_returns_and_ends_the_calls_in_flight(
        start_service: ServiceFactory, silent: list[str]) -> None:
    """``AtpClient.close()`` the same way: its channel closes at once (no grace), nothing for a cancel to cut."""
    await start_service()
    atp = AtpClient(silent[0], timeout_s=60.0)
    calls = [asyncio.ensure_future(atp.get_reservation(f"r{n}")) for n in range(3)]
    await asyncio.sleep(0)
    first, second = asyncio.ensure_future(atp.close()), asyncio.ensure_future(atp.close())
    await asyncio.sleep(0)
    first.cancel()
    await second
    ended = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(e, asyncio.CancelledError) for e in ended), ended
    await asyncio.gather(first, return_exceptions=True)
