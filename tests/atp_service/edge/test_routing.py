"""Routing against the real gRPC service and a real Redis: GetRouting, and RoutedClient's round trips.

Until ``AtpService`` wires it, each test advertises the service's address itself (``advertised``),
as the service will once it listens.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from atp_client import AtpClient, RoutedClient, home_group, place, timestamp
from atp_client._errors import deadline_exceeded
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from atp_service.edge.auth import new_token, token_hash
from reservation import Limits
from tests.atp_service.refusals import fields_of, refused, told
from tests.conftest import ServiceFactory
from tests.ports import held_port

T0 = 1_700_000_000_000
SKUS = ("A", "B", "C", "D")


def advertised(service: AtpService) -> str:
    """What ``AtpService`` is to do once it listens: tell the servicer its address."""
    address = f"127.0.0.1:{service.port}"
    service._servicer.advertise(address, service.config.shards)
    return address


async def stock(client: AtpClient, clock_ms: int, quantity: int = 10) -> None:
    facts = [pb.Fact(event_id=f"r-{sku}", source="wms", kind=pb.FACT_KIND_RECEIPT, sku=sku, location="L",
                     quantity=quantity, event_time=timestamp(clock_ms - 1000)) for sku in SKUS]
    assert all(r.outcome == pb.FACT_OUTCOME_APPLIED for r in await client.record_events(facts))


def after_the_others(routed: RoutedClient, group: int, unanswered: bool = False) -> None:
    """``routed``'s read of ``group`` sent only once another group's read has been answered (or refused); with
    ``unanswered``, ended then ``DEADLINE_EXCEEDED`` instead, as a read whose owner paused is."""
    send, later_told = routed._send, asyncio.Event()

    async def in_turn(rpc: str, req: Any, to: int | None, deadline: float) -> Any:
        if to == group:
            await later_told.wait()
            if unanswered:
                raise deadline_exceeded("the owner paused")
            return await send(rpc, req, to, deadline)
        try:
            return await send(rpc, req, to, deadline)
        finally:
            later_told.set()

    routed._send = in_turn  # type: ignore[method-assign]


async def test_get_routing_routes_every_group_to_the_one_process(start_service: ServiceFactory) -> None:
    service, client = await start_service(shards=6)
    address = advertised(service)
    answer = await client.stub.GetRouting(pb.GetRoutingRequest(), timeout=5)
    assert (answer.shards, answer.placement, answer.address) == (6, "crc32-mod", address)
    assert [(g.group, g.address, g.epoch) for g in answer.groups] == [(g, address, 0) for g in range(6)]
    assert service.engine is not None
    assert all(service.engine.place(sku) == place(sku, 6) for sku in (*SKUS, "sku-00001", "Größe-42"))


async def test_get_routing_is_a_read(start_service: ServiceFactory, tmp_path: Path) -> None:
    tokens = {role: new_token() for role in ("oms", "ingest", "channel", "admin")}
    callers = tmp_path / "callers.toml"
    callers.write_text("\n".join(f'[[callers]]\nname = "{r}"\nroles = ["{r}"]\ntoken_sha256 = "{token_hash(t)}"\n'
                                 for r, t in tokens.items()))
    service, _ = await start_service(auth="on", callers_file=callers)
    advertised(service)
    for role, token in tokens.items():
        async with AtpClient(f"127.0.0.1:{service.port}", token=token, timeout_s=5) as client:
            call = client.stub.GetRouting(pb.GetRoutingRequest())
            if role == "ingest":
                assert await told(call) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_PERMITTED")
            else:
                assert (await call).shards == service.config.shards


async def test_routed_client_round_trips_against_one_process(start_service: ServiceFactory) -> None:
    service, client = await start_service()
    address = advertised(service)
    await stock(client, service.clock.now_ms())
    async with RoutedClient(address, timeout_s=5) as routed:
        held = await routed.reserve("r1", [("A", "L", 2), ("D", "L", 1)], order_ref="o-1", ttl_seconds=60)
        assert held.state == pb.RESERVATION_STATE_HELD
        assert routed.routes is not None and routed.routes.owners == (address,) * service.config.shards
        assert routed._homes.get("r1") == home_group(["A", "D"], service.config.shards)
        assert (await routed.confirm("r1")).state == pb.RESERVATION_STATE_CONFIRMED
        got = await routed.get_reservation("r1")
        assert got.state == pb.RESERVATION_STATE_CONFIRMED and [ln.committed for ln in got.lines] == [2, 1]
        assert (await routed.fulfill("r1", [("A", "L", 1)], operation_id="ship-1")).lines[0].fulfilled == 1
        assert (await routed.release("r1")).state == pb.RESERVATION_STATE_FULFILLED
    # A client that never reserved it sends the id to any process, and learns its home from the answer.
    await client.reserve("r2", [("B", "L", 1)])
    async with RoutedClient(address, timeout_s=5) as fresh:
        assert (await fresh.get_reservation("r2")).state == pb.RESERVATION_STATE_HELD
        assert fresh._homes.get("r2") == place("B", service.config.shards)
        assert (await fresh.release("r2")).state == pb.RESERVATION_STATE_RELEASED
    (a,) = await client.availability([("B", "L")])
    assert a.available == 10


async def test_routed_client_refuses_availability_of_no_keys_as_the_service_does(start_service: ServiceFactory) -> None:
    """A ``GetAvailability`` of no keys is refused ``INVALID_FIELD`` naming ``keys`` (a caller's bug), as ``AtpClient``
    is told by the service; ``RoutedClient``, which splits the keys by group, answered it ``[]``, asking nothing."""
    service, client = await start_service()
    address = advertised(service)
    direct = await refused(client.availability([]))
    async with RoutedClient(address, timeout_s=5) as routed:
        said = await refused(routed.availability([]))
    assert (said.code, said.reason, fields_of(said)) == (direct.code, direct.reason, fields_of(direct)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", ["keys"])


async def test_routed_client_names_the_key_at_fault_by_its_place_in_the_callers_keys(
        start_service: ServiceFactory) -> None:
    """``RoutedClient`` asks each group's keys in a call of their own: a key at fault was named by its place in that
    call (``keys[0].location`` for the caller's second key), pointing the caller at a key that is fine. Named by its
    place in the caller's keys, as the service names it when asked them all at once."""
    service, client = await start_service()
    address = advertised(service)
    other = next(sku for sku in SKUS if place(sku, service.config.shards) != place("A", service.config.shards))
    keys = [("A", "L"), (other, "")]
    direct = await refused(client.availability(keys))
    async with RoutedClient(address, timeout_s=5) as routed:
        said = await refused(routed.availability(keys))
    assert (direct.code, direct.reason, fields_of(direct)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", ["keys[1].location"])
    assert (said.code, said.reason, fields_of(said), said.message) == (
        direct.code, direct.reason, fields_of(direct), direct.message)


async def test_routed_client_asks_another_seed_when_one_does_not_answer(start_service: ServiceFactory) -> None:
    service, client = await start_service()
    address = advertised(service)
    await stock(client, service.clock.now_ms())
    nobody = f"127.0.0.1:{held_port()}"
    async with RoutedClient([nobody, address], timeout_s=5) as routed:
        assert (await routed.reserve("r1", [("C", "L", 3)])).state == pb.RESERVATION_STATE_HELD
        assert routed.routes is not None and routed.routes.address == address
    async with RoutedClient([nobody], timeout_s=20) as lost:  # refused at once: the bound only stops a hang
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await lost.get_reservation("r1")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_routed_client_names_the_first_key_at_fault_whichever_groups_read_answers_first(
        start_service: ServiceFactory) -> None:
    """Keys at fault in two groups, each group's keys asked in a call of its own: the caller was told the
    refusal of whichever call came back first - here the second group's, ``keys[3]``, while the service asked
    them all names ``keys[1]``. The earlier group's call is held until the later group's has been refused."""
    service, client = await start_service()
    address = advertised(service)
    shards = service.config.shards
    other = next(sku for sku in SKUS if place(sku, shards) != place("A", shards))
    keys = [("A", "L"), ("A", ""), (other, "L"), (other, "")]
    direct = await refused(client.availability(keys))
    async with RoutedClient(address, timeout_s=5) as routed:
        after_the_others(routed, place("A", shards))
        said = await refused(routed.availability(keys))
    assert (direct.code, direct.reason, fields_of(direct)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", ["keys[1].location"])
    assert (said.code, said.reason, fields_of(said), said.message) == (
        direct.code, direct.reason, fields_of(direct), direct.message)


async def test_routed_client_refuses_more_keys_than_the_service_takes_unsent(start_service: ServiceFactory) -> None:
    """Three keys in two groups, the service taking two a call: asked them all, the service refuses the call
    ``LIMIT_EXCEEDED`` naming ``max_availability_keys``; split by group (at most two a call), ``RoutedClient``
    had them answered. ``GetRouting`` tells the limit: refused unsent, as the service refuses it (the table asked
    again first: the limit it told may have been raised since)."""
    service, client = await start_service(limits=Limits(max_availability_keys=2))
    address = advertised(service)
    shards = service.config.shards
    other = next(sku for sku in SKUS if place(sku, shards) != place("A", shards))
    keys = [("A", "L"), (other, "L"), ("A", "L2")]
    direct = await refused(client.availability(keys))
    async with RoutedClient(address, timeout_s=5) as routed:
        await routed.refresh()
        sent: list[str] = []
        call_at = routed._call_at

        async def counted(address: str, rpc: str, *args: Any) -> Any:
            sent.append(rpc)
            return await call_at(address, rpc, *args)

        routed._call_at = counted  # type: ignore[method-assign]
        said = await refused(routed.availability(keys))
        assert sent == ["GetRouting"]  # refused before any key was asked, the table asked again first
        assert len(await routed.availability(keys[:2])) == 2
        assert routed.routes is not None and routed.routes.max_availability_keys == 2
    assert (direct.code, direct.reason, direct.metadata.get("limit"), fields_of(direct)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "LIMIT_EXCEEDED", "max_availability_keys", ["keys"])
    assert (said.code, said.reason, said.metadata.get("limit"), fields_of(said)) == (
        direct.code, direct.reason, "max_availability_keys", ["keys"])
    assert "max_availability_keys=2" in said.message


async def test_routed_client_tells_a_key_at_fault_where_an_earlier_groups_read_is_not_answered(
        start_service: ServiceFactory) -> None:
    """A key at fault in the later group refused, the earlier group's read waited for (its keys could hold an earlier
    fault) ends unanswered: its owner paused past the deadline. The service asked them all refuses the call for the
    key at fault whatever the other keys' owners do; the caller was told the earlier read's ``DEADLINE_EXCEEDED``
    (``Retryable``: the same refused call sent again, each try waiting out its deadline) in place of the refusal."""
    service, _ = await start_service()
    address = advertised(service)
    shards = service.config.shards
    other = next(sku for sku in SKUS if place(sku, shards) != place("A", shards))
    keys = [("A", "L"), (other, "L"), (other, "")]
    async with RoutedClient(address, timeout_s=5) as routed:
        after_the_others(routed, place("A", shards), unanswered=True)  # as gRPC tells a call its owner never answered
        said = await refused(routed.availability(keys))
    assert (said.code, said.reason, fields_of(said)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", ["keys[2].location"])


async def test_routed_client_asks_the_table_again_before_refusing_keys_past_the_limit_it_told(
        start_service: ServiceFactory) -> None:
    """The table told ``max_availability_keys`` 2; the process's limit raised to 5 since (as a restart with it would).
    Refused unsent by the table's limit, a call never had the table asked again - no redirect, nothing failing - and
    three keys the service answers were refused for as long as the table stood. Asked again first, they are read."""
    service, client = await start_service(limits=Limits(max_availability_keys=2))
    address = advertised(service)
    shards = service.config.shards
    other = next(sku for sku in SKUS if place(sku, shards) != place("A", shards))
    keys = [("A", "L"), (other, "L"), ("A", "L2")]
    async with RoutedClient(address, timeout_s=5) as routed:
        assert (await routed.refresh()).max_availability_keys == 2
        service._servicer.limits = replace(service._servicer.limits, max_availability_keys=5)
        assert len(await client.availability(keys)) == 3
        assert len(await routed.availability(keys)) == 3
        assert routed.routes is not None and routed.routes.max_availability_keys == 5
