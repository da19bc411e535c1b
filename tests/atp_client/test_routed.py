"""``RoutedClient`` against a real service, with processes that do not answer beside it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from atp_client import AtpError, Retryable, RetryPolicy, RoutedClient, place
from atp_client._client import SERVICE_CONFIG
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge.auth import new_token, token_hash
from atp_service.edge.routing import Route, RoutingTable
from reservation import Moved
from tests.atp_service.edge.test_forward import InHand, Relay
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
    timeout_s = 10.0  # any deadline shows it (a silent seed would take all of it); a busy host has room in this
    async with RoutedClient([*silent, address], timeout_s=timeout_s) as routed:
        started = time.monotonic()
        held = await routed.reserve("r1", [("A", "L", 1)])
        took = time.monotonic() - started
    assert held.state == pb.RESERVATION_STATE_HELD
    assert took < timeout_s, f"a call with a deadline of {timeout_s}s took {took:.1f}s"


async def test_a_group_taken_from_an_owner_that_stopped_answering_is_routed_to_its_new_owner(
        start_service: ServiceFactory, silent: list[str]) -> None:
    """An owner paused (SIGSTOP, a frozen VM) or cut off loses its groups once its lease runs out,
    and another process takes them over. A call the client routed to it by its cached table ran out
    of deadline, and the table was kept: every later call of those groups went to the silent process
    too, and timed out, for as long as it stayed silent — the new owner never asked for."""
    service, client = await start_service()
    address = advertised(service)
    await stock(client, service.clock.now_ms())
    group = place("A", service.config.shards)
    silent_owner = silent[0]
    service._servicer.routing = lambda: RoutingTable(service.config.shards, address, tuple(
        Route(g, silent_owner if g == group else address, 1) for g in range(service.config.shards)))
    async with RoutedClient(address, timeout_s=10.0) as routed:  # 10 s where an answer is due: a bound, not a pace
        assert (await routed.refresh()).owner(group) == silent_owner
        service._servicer.routing = lambda: RoutingTable(service.config.shards, address, tuple(  # taken over
            Route(g, address, 2) for g in range(service.config.shards)))
        routed.timeout_s = 1.0
        with pytest.raises(Retryable) as timed_out:  # sent to the silent owner: its deadline runs out
            await routed.reserve("r1", [("A", "L", 1)])
        assert timed_out.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        routed.timeout_s = 10.0  # sent to the silent owner again, the retry would run this out as well
        held = await routed.reserve("r1", [("A", "L", 1)])  # the retry, with the same id, at the new owner
    assert held.state == pb.RESERVATION_STATE_HELD
    assert routed.routes is not None and routed.routes.owner(group) == address


@pytest.mark.parametrize("retrying", [{}, {"retry": RetryPolicy()}, {"options": [
    ("grpc.service_config", json.dumps(SERVICE_CONFIG))]}], ids=["no-retry", "grpc-retry", "service-config"])
async def test_a_change_whose_owner_was_lost_with_it_in_hand_is_in_doubt_whatever_the_next_process_says(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch, retrying: dict[str, Any]) -> None:
    """The owner was lost (killed, its connection reset) with a Reserve in hand; the client asked
    the next process, which owned the group no more than anyone yet (the takeover under way) and
    refused it GROUP_MOVED — "nothing was applied" — and that refusal was raised. The lost owner
    had made the reservation (R7): the caller was told a write in doubt had been refused. With
    gRPC's retries on, the lost try was sent again to the owner, now refusing connections: the
    last try's "failed to connect" must not pass for a call never sent — also where gRPC retries
    by the published service config passed as a channel option (docs/API.md), not by ``retry``."""
    owner, at_owner = await start_service()
    other, _ = await start_service(key_prefix="atp-b:")
    await stock(at_owner, owner.clock.now_ms())
    other_address = advertised(other)
    shards = other.config.shards
    group = place("A", shards)
    relay = Relay(advertised(owner))
    owner_address = await relay.start()
    other._servicer.routing = lambda: RoutingTable(shards, other_address, tuple(
        Route(g, owner_address if g == group else other_address, 1) for g in range(shards)))
    assert owner.engine is not None
    in_hand = InHand(owner.engine.reserve)

    async def nobody_owns(*_args: Any, **_kw: Any) -> Any:
        raise Moved(group, "", epoch=2)

    monkeypatch.setattr(owner.engine, "reserve", in_hand)
    monkeypatch.setattr(other.engine, "reserve", nobody_owns)
    async with RoutedClient(other_address, timeout_s=10, **retrying) as routed:
        assert (await routed.refresh()).owner(group) == owner_address
        call = asyncio.ensure_future(routed.reserve("r1", [("A", "L", 1)]))
        await asyncio.wait_for(in_hand.entered.wait(), 10)
        other._servicer.routing = lambda: RoutingTable(shards, other_address, tuple(  # the takeover under way
            Route(g, "" if g == group else other_address, 1) for g in range(shards)))
        await relay.cut()
        with pytest.raises(Retryable) as lost:
            await call
    await made_yet_in_doubt(in_hand, at_owner, lost.value)


async def made_yet_in_doubt(in_hand: Any, at_owner: Any, error: AtpError) -> None:
    """The Reserve ``r1`` held ``in_hand`` at its owner is let through: it was made there, and the caller,
    who lost it with that owner, was told it is in doubt (R7), whatever the next process said."""
    in_hand.go.set()
    await in_hand.landed[0]
    assert (await at_owner.get_reservation("r1")).state == pb.RESERVATION_STATE_HELD  # it was made
    assert (error.code(), error.reason) == (grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN"), error


class Paused(Relay):
    """A relay to a process that clearing ``running`` stops as SIGSTOP does: its connections stay open
    and take what is sent (``held`` once they have), and nothing goes on until ``running`` is set."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.running, self.held = asyncio.Event(), asyncio.Event()
        self.running.set()

    def _passing(self) -> Callable[[bytes], Awaitable[None]]:
        async def held_while_paused(data: bytes) -> None:
            if not self.running.is_set():
                self.held.set()
            await self.running.wait()
        return held_while_paused


async def test_a_call_waiting_for_another_calls_routing_table_ends_by_its_own_deadline(
        start_service: ServiceFactory) -> None:
    """One call asks for the routing table (its seed paused: it waits out its own deadline); a second
    call, with a shorter deadline, is refused by the owner its table names (gone) and needs the table
    too. It queued behind the first call's asking, however long that took, and outlived its own
    deadline: a call must end DEADLINE_EXCEEDED by its deadline whatever it waits for."""
    service, _ = await start_service()
    seed = Paused(advertised(service))
    seed_address = await seed.start()
    gone = Relay(seed_address)
    gone_address = await gone.start()
    await gone.cut()  # an owner gone: its connections refused
    shards = service.config.shards
    group = place("A", shards)
    service._servicer.routing = lambda: RoutingTable(shards, seed_address, tuple(
        Route(g, gone_address if g == group else seed_address, 1) for g in range(shards)))
    async with RoutedClient(seed_address, timeout_s=30.0) as routed:
        assert (await routed.refresh()).owner(group) == gone_address
        seed.running.clear()  # the only process that answers: paused
        asking = asyncio.ensure_future(routed.refresh())  # waits for the paused seed, up to 30 s
        await asyncio.wait_for(seed.held.wait(), 10)  # it asks the paused seed, the table's asking its own
        routed.timeout_s = 0.5  # the next calls are in a hurry
        call = asyncio.ensure_future(routed.reserve("r1", [("A", "L", 1)]))
        await asyncio.wait({call, asking}, return_when=asyncio.FIRST_COMPLETED)
        assert call.done() and not asking.done(), "the call outlived its deadline, waiting for another's table"
        with pytest.raises(Retryable) as late:
            await call
        assert (late.value.code(), late.value.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, ""), late.value
        seed.running.set()
        await asking


async def test_a_change_lost_with_its_owner_then_refused_access_by_the_next_process_is_in_doubt(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The owner was lost with a Reserve in hand; the next process asked (for the routing table) does
    not know the caller's token yet (its callers file not rolled out) and refused it
    UNAUTHENTICATED. Only ``Retryable`` refusals were turned into "in doubt": the caller was told
    ``AccessDenied`` — refused, nothing made — while the lost owner had made the reservation (R7)."""
    callers = tmp_path / "callers.toml"
    callers.write_text(f'[[callers]]\nname = "x"\nroles = ["oms"]\ntoken_sha256 = "{token_hash(new_token())}"\n')
    owner, at_owner = await start_service()
    other, _ = await start_service(key_prefix="atp-b:", auth="on", callers_file=callers)
    await stock(at_owner, owner.clock.now_ms())
    shards = owner.config.shards
    relay = Relay(advertised(owner))
    owner_address = await relay.start()
    other_address = advertised(other)
    owner._servicer.routing = lambda: RoutingTable(shards, owner_address, tuple(
        Route(g, owner_address if g == place("A", shards) else other_address, 1) for g in range(shards)))
    assert owner.engine is not None
    in_hand = InHand(owner.engine.reserve)
    monkeypatch.setattr(owner.engine, "reserve", in_hand)
    async with RoutedClient(owner_address, timeout_s=10, token=new_token()) as routed:
        await routed.refresh()
        call = asyncio.ensure_future(routed.reserve("r1", [("A", "L", 1)]))
        await asyncio.wait_for(in_hand.entered.wait(), 10)
        await relay.cut()
        with pytest.raises(AtpError) as lost:
            await call
    await made_yet_in_doubt(in_hand, at_owner, lost.value)
