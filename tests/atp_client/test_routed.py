"""``RoutedClient`` against a real service, with processes that do not answer beside it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from atp_client import RoutedClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.edge.test_routing import advertised, stock
from tests.conftest import ServiceFactory


@pytest.fixture
async def silent() -> AsyncIterator[list[str]]:
    """Two addresses whose processes accept connections and never answer: what a process paused
    (SIGSTOP, a long GC, a VM frozen) or cut off behind a firewall that drops packets looks like."""
    hold = asyncio.Event()
    connections: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await hold.wait()

    servers = [await asyncio.start_server(accept, "127.0.0.1", 0) for _ in range(2)]
    yield [f"127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers]
    hold.set()
    for writer in connections:
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_a_call_ends_within_its_deadline_when_seeds_do_not_answer(
        start_service: ServiceFactory, silent: list[str]) -> None:
    """``timeout_s`` is each call's deadline: the seeds asked for the routing table must not each
    take a deadline of their own, one after the other, before the process that answers is asked."""
    service, client = await start_service()
    address = advertised(service)
    await stock(client, service.clock.now_ms())
    timeout_s = 2.0
    async with RoutedClient([*silent, address], timeout_s=timeout_s) as routed:
        started = time.monotonic()
        held = await routed.reserve("r1", [("A", "L", 1)])
        took = time.monotonic() - started
    assert held.state == pb.RESERVATION_STATE_HELD
    assert took < timeout_s, f"a call with a deadline of {timeout_s}s took {took:.1f}s"
