"""``RoutedClient`` bounds: redirects followed a bounded number of times, a call retried after its group
moved holds once (R5), and a client closed with calls in flight leaves no channel open."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from atp_client import Retryable, RoutedClient, place
from atp_client._routed import MAX_HOPS
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge.routing import Route, RoutingTable
from reservation import Moved
from tests.atp_client.test_routed import Paused
from tests.atp_service.edge.test_routing import advertised, stock
from tests.conftest import ServiceFactory


async def test_a_client_closed_while_a_call_waits_for_the_routing_table_leaves_no_channel_open(
        start_service: ServiceFactory) -> None:
    """One call asks a paused seed for the routing table; a second waits for that asking. The client is
    closed: the first call ends with its channel, and the second, taking the table's asking over, must
    not open a new channel to the seed that nothing closes any more (nor go on to reserve)."""
    service, at_service = await start_service()
    seed = Paused(advertised(service))
    seed_address = await seed.start()
    shards = service.config.shards
    service._servicer.routing = lambda: RoutingTable(shards, seed_address, tuple(
        Route(g, seed_address, 1) for g in range(shards)))
    await stock(at_service, service.clock.now_ms())
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
