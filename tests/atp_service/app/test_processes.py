"""Several service processes sharing one keyspace (``ownership = leases``): each group owned by
exactly one process, shares balanced, groups handed over when a process stops; any process answers
any call — it forwards a call for a group another owns, finds a reservation another holds, or
redirects a caller that routes by itself; an order whose lines fall in groups of different
processes is decided all or nothing by a saga whose steps go to the processes owning them."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import zlib
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio

from atp_client import AtpClient, RoutedClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from atp_service.app.keyspace import ConfigMismatch
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory, services_on
from tests.ports import held_port
from tests.waiting import until

SHARDS = 4
Process = tuple[AtpService, AtpClient]


@pytest.fixture
async def start_process(redis_url: str) -> AsyncIterator[ServiceFactory]:
    """Processes in this test's process, balancing every 200 ms. Their leases are the default 5 s:
    none of these tests waits for a lease to lapse, and with 600 ms leases one lapsed whenever the
    test process (both services' event loop) stood still 400 ms on a busy host, and calls to its
    group were refused as being taken over (a safe answer, but not what these tests are about)."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=()) as start:
        yield start


async def processes(start: ServiceFactory, n: int) -> list[Process]:
    running = [await start(port=held_port(), host="127.0.0.1") for _ in range(n)]
    await members_read(running)
    await until(lambda: balanced(running) and routed(running), f"the groups spread over the {n} processes", 60)
    return running


async def members_read(running: list[Process]) -> None:
    """Each of ``running`` renews once now, reading the members as its renewals do: a process started after it
    is seen at once, where its renewer's next renewal (a third of its lease after the last: 1.7 s of 5 s) was
    waited for before it handed any group over. A renewal more changes nothing of what the renewals keep."""
    for service, _ in running:
        assert service.membership is not None
        await service.membership.renew()


def routed(running: list[Process]) -> bool:
    """Every process knows every group's owner (a table read before a hand-over lags behind: a call
    it forwards there meanwhile is refused GROUP_MOVED, and retried by its caller)."""
    owners = {g: f"127.0.0.1:{s.port}" for s, _ in running for g in owned(s)}
    return all(s.membership is not None and {g: s.membership.where(g)[0] for g in range(SHARDS)} == owners
               for s, _ in running)


def owned(service: AtpService) -> set[int]:
    assert service.membership is not None and service.engine is not None
    return {g for g in service.membership.leases.held if not service.engine.actors[g].vacant}


def group_of(sku: str) -> int:
    return zlib.crc32(sku.encode()) % SHARDS


def owner_of(running: list[Process], sku: str) -> Process:
    return next(p for p in running if group_of(sku) in owned(p[0]))


def not_owner_of(running: list[Process], sku: str) -> Process:
    return next(p for p in running if group_of(sku) not in owned(p[0]))


def balanced(running: list[Process]) -> bool:
    shares = [owned(service) for service, _ in running]
    return set().union(*shares) == set(range(SHARDS)) and sum(map(len, shares)) == SHARDS and \
        max(map(len, shares)) - min(map(len, shares)) <= 1


def skus_in_other_groups(running: list[Process]) -> tuple[str, str]:
    """Two SKUs whose groups different processes own."""
    skus = [f"k{i}" for i in range(64)]
    first = skus[0]
    owner = owner_of(running, first)[0]
    return first, next(s for s in skus if owner_of(running, s)[0] is not owner)


async def test_three_processes_share_the_groups_each_owned_once_and_say_so(start_process: ServiceFactory) -> None:
    running = await processes(start_process, 3)
    owners = {g: f"127.0.0.1:{s.port}" for s, _ in running for g in owned(s)}
    for _, client in running:  # each process's table as it last read it: it catches up within a renewal
        for _ in range(3000):  # 30 s: a bound, not a timing
            table = await client.stub.GetRouting(pb.GetRoutingRequest())
            if {route.group: route.address for route in table.groups} == owners:
                break
            await asyncio.sleep(0.01)
        assert table.shards == SHARDS and table.placement == "crc32-mod"
        assert {route.group: route.address for route in table.groups} == owners


async def test_a_call_for_another_process_s_group_is_forwarded_or_redirected(start_process: ServiceFactory) -> None:
    running = await processes(start_process, 2)
    sku = "moved-sku"
    owner, _ = owner_of(running, sku)
    _, other = not_owner_of(running, sku)
    await other.record_events([receipt("in-1", sku, "DC", 5)])  # RecordEvents: per fact, at its owner? see below
    (position,) = await owner_of(running, sku)[1].availability([(sku, "DC")])
    assert position.on_hand == 5
    assert (await other.reserve("r-fwd", [(sku, "DC", 2)])).state == pb.RESERVATION_STATE_HELD
    assert owner.engine is not None and owner.engine.home_of("r-fwd") == group_of(sku), "decided by the owner"
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # a caller routing by itself is redirected
        await other.stub.Reserve(pb.ReserveRequest(reservation_id="r-red", lines=[pb.Line(
            sku=sku, location="DC", quantity=1)]), metadata=(("atp-routing", "redirect"),))
    trailers = dict(refused.value.trailing_metadata() or ())
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert trailers["atp-moved"] == f"{group_of(sku)} 127.0.0.1:{owner.port}"
    (position,) = await owner_of(running, sku)[1].availability([(sku, "DC")])
    assert position.reserved == 2, "nothing applied by the redirected call"


async def test_any_process_finds_a_reservation_another_holds_or_says_there_is_none(
        start_process: ServiceFactory) -> None:
    running = await processes(start_process, 3)
    sku = "found-sku"
    _, owner = owner_of(running, sku)
    await owner.record_events([receipt("in-1", sku, "DC", 5)])
    await owner.reserve("r-found", [(sku, "DC", 2)])
    _, other = not_owner_of(running, sku)
    assert (await other.get_reservation("r-found")).reservation_id == "r-found"
    assert (await other.confirm("r-found")).state == pb.RESERVATION_STATE_CONFIRMED
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await other.get_reservation("never-made")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_order_over_groups_of_different_processes_is_all_or_nothing(start_process: ServiceFactory) -> None:
    running = await processes(start_process, 2)
    a, b = skus_in_other_groups(running)
    async with RoutedClient([f"127.0.0.1:{s.port}" for s, _ in running]) as client:
        await owner_of(running, a)[1].record_events([receipt("in-a", a, "DC", 5)])
        await owner_of(running, b)[1].record_events([receipt("in-b", b, "DC", 1)])
        held = await client.reserve("o-1", [(a, "DC", 2), (b, "DC", 1)], ttl_seconds=600)
        assert held.state == pb.RESERVATION_STATE_HELD
        refused = await client.reserve("o-2", [(a, "DC", 1), (b, "DC", 1)], ttl_seconds=600)  # b has none left
        assert refused.state == pb.RESERVATION_STATE_REJECTED
        for sku, reserved in ((a, 2), (b, 1)):  # o-2 holds nothing anywhere
            (p,) = await owner_of(running, sku)[1].availability([(sku, "DC")])
            assert p.reserved == reserved, (sku, p)
        for _, any_process in running:  # its id is answered wherever it is asked
            assert (await any_process.get_reservation("o-1")).state == pb.RESERVATION_STATE_HELD
        assert (await running[0][1].release("o-1")).state == pb.RESERVATION_STATE_RELEASED
        for sku in (a, b):
            (p,) = await owner_of(running, sku)[1].availability([(sku, "DC")])
            assert p.reserved == 0, (sku, p)


async def test_routed_client_reads_positions_of_every_group_at_their_owners(start_process: ServiceFactory) -> None:
    running = await processes(start_process, 2)
    skus = [f"read-{i}" for i in range(12)]
    assert {group_of(sku) for sku in skus} == set(range(SHARDS))
    _, any_process = running[0]
    await any_process.record_events([receipt(f"in-{n}", sku, "DC", n + 1) for n, sku in enumerate(skus)])
    async with RoutedClient([f"127.0.0.1:{s.port}" for s, _ in running]) as client:
        keys = [(sku, loc) for sku in reversed(skus) for loc in ("DC", "nowhere")]
        positions = await client.availability(keys)
    assert [(p.sku, p.location) for p in positions] == keys, "answered in the order asked"
    stocked = {sku: n + 1 for n, sku in enumerate(skus)}
    assert [p.on_hand for p in positions] == [stocked[sku] if loc == "DC" else 0 for sku, loc in keys]


async def test_a_stopped_process_hands_its_groups_over_and_nothing_is_lost(start_process: ServiceFactory) -> None:
    running = await processes(start_process, 2)
    skus = [f"s{i}" for i in range(12)]
    for n, sku in enumerate(skus):
        _, client = owner_of(running, sku)
        await client.record_events([receipt(f"in-{n}", sku, "DC", 10)])
        await client.reserve(f"r-{n}", [(sku, "DC", 3)])
    leaving, _ = running[0]
    await leaving.stop(grace_s=0.1)
    staying, client = running[1]
    await until(lambda: owned(staying) == set(range(SHARDS)), "the other process owns every group", 60)
    for n, sku in enumerate(skus):
        assert (await client.get_reservation(f"r-{n}")).lines[0].held == 3
        (position,) = await client.availability([(sku, "DC")])
        assert (position.on_hand, position.available) == (10, 7)


async def test_a_process_reports_snapshot_sizes_of_the_groups_it_serves_only(start_process: ServiceFactory) -> None:
    """A group handed over with a final snapshot: its size is the next owner's to report, not this one's."""
    first, client = await start_process(port=held_port(), host="127.0.0.1")
    await until(lambda: owned(first) == set(range(SHARDS)), "the first process owns every group", 60)
    await client.record_events([receipt(f"in-{i}", f"s{i}", "DC", 10) for i in range(12)])  # in every group
    running = [(first, client), await start_process(port=held_port(), host="127.0.0.1")]
    await members_read(running)
    await until(lambda: balanced(running), "the groups spread over the 2 processes", 60)
    reported = {int(sample.labels["shard"]) for metric in first.metrics.storage.snapshot_bytes.collect()
                for sample in metric.samples}
    handed_over = set(range(SHARDS)) - owned(first)
    assert handed_over and not reported & handed_over, (reported, handed_over)


async def test_shipments_of_an_order_over_processes_fulfil_its_parts_and_resolve_it(
        start_process: ServiceFactory) -> None:
    running = await processes(start_process, 2)
    a, b = skus_in_other_groups(running)
    _, any_process = running[1]
    await any_process.record_events([receipt("in-a", a, "DC", 5), receipt("in-b", b, "DC", 5)])  # split by owner
    assert (await any_process.reserve("o-ship", [(a, "DC", 2), (b, "DC", 1)], ttl_seconds=600)).state == \
        pb.RESERVATION_STATE_HELD
    await any_process.confirm("o-ship")
    shipped = await any_process.record_events([shipment("out-a", a, 2, "o-ship"), shipment("out-b", b, 1, "o-ship")])
    assert [r.outcome for r in shipped] == [pb.FACT_OUTCOME_APPLIED] * 2, shipped
    for sku, left in ((a, 3), (b, 4)):
        (p,) = await owner_of(running, sku)[1].availability([(sku, "DC")])
        assert (p.on_hand, p.reserved, p.committed) == (left, 0, 0), (sku, p)
    order = await any_process.get_reservation("o-ship")
    assert order.state == pb.RESERVATION_STATE_FULFILLED, order
    home = next(s for s, _ in running if s.engine is not None and s.engine.home_of("o-ship") is not None)
    assert home.engine is not None
    record = home.engine.actors[home.engine.home_of("o-ship")].ledger.reservation("o-ship")  # type: ignore[index]
    assert record is not None and record.state.name == "FULFILLED", "resolved at its home, not only shown so"


_STAMPS: dict[tuple[str, str, str, int, str], int] = {}
"""Each shipment's stamp, by the test that made it and its content: the wall clock when the test first made it."""


def shipment(eid: str, sku: str, qty: int, rid: str) -> pb.Fact:
    """A SHIPMENT naming ``rid``, stamped by the wall clock these processes run on when the test first made it (a
    resend keeps its stamp: the same payload, E8): never before a reservation the test made by more than a test may
    run (``timeout`` in pyproject.toml, well under half ``retention_ms``) — one stamped half of it before is an
    earlier holder's of the id, fulfilling nothing (R4)."""
    key = (os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0], eid, sku, qty, rid)
    at = _STAMPS.setdefault(key, int(time.time() * 1000))
    fact = receipt(eid, sku, "DC", qty, at, kind=pb.FACT_KIND_SHIPMENT)
    fact.reservation_id = rid
    return fact


async def test_a_process_of_the_other_ownership_mode_is_refused_at_start(start_process: ServiceFactory) -> None:
    await processes(start_process, 1)
    with pytest.raises(ConfigMismatch, match="ownership: the keyspace 'atp:' is served with ownership=leases"):
        await start_process(ownership="keyspace")


async def test_a_shard_that_stops_working_is_recovered_from_its_log_and_the_process_serves_on(
        start_process: ServiceFactory) -> None:
    running = await processes(start_process, 2)
    sku = "broken-sku"
    service, client = owner_of(running, sku)
    await client.record_events([receipt("in-1", sku, "DC", 5)])
    await client.reserve("r-before", [(sku, "DC", 2)])
    assert service.engine is not None
    service.engine.actors[group_of(sku)].break_down(RuntimeError("a bug"))  # its memory can no longer be trusted
    await until(lambda: any(group_of(sku) in owned(s) for s, _ in running), "the group served again", 60)
    _, owner = owner_of(running, sku)
    assert (await owner.get_reservation("r-before")).lines[0].held == 2
    (position,) = await owner.availability([(sku, "DC")])
    assert (position.on_hand, position.reserved) == (5, 2)
    assert not service.failed.is_set(), "the process serves its other groups on"


async def test_a_process_joining_a_keyspace_reports_its_recovery_time(start_process: ServiceFactory) -> None:
    """With ``ownership = leases`` the start's recovery (its first share of groups taken and recovered)
    was never measured: ``atp_recovery_seconds`` stayed 0 and ATPSlowRecovery could never fire."""
    service, _ = await start_process(port=held_port(), host="127.0.0.1")
    assert (service.metrics.registry.get_sample_value("atp_recovery_seconds") or 0) > 0


async def test_a_process_joining_with_an_address_past_the_routing_bound_is_said_at_error(
        redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A process whose ``max_message_bytes`` cannot carry GetRouting's answer once another joins with a
    longer address (every group could be at it) says so at ERROR, naming it: its routing clients would be
    refused the table. Each start checks its own address only (``test_cli``). The other process is its
    member entry, as Redis holds one (``<address>|<token>``): nothing is sent to an address that long."""
    longest = "p" * 1100 + ":1"  # 64 groups at it pass 64 KiB
    async with services_on(redis_url, ownership="leases", lease_ms=3_000, balance_ms=200, shards=64,
                           input_streams=()) as start:
        with caplog.at_level(logging.INFO, logger="atp_service.app.membership"):
            service, _ = await start(port=held_port(), host="127.0.0.1", max_message_bytes=64 << 10)
            client = redis.asyncio.Redis.from_url(redis_url)
            seconds, _ = await client.time()
            await client.zadd(f"{service.config.key_prefix}members", {f"{longest}|joined": (seconds + 600) * 1000})
            await client.aclose()

            def said() -> list[logging.LogRecord]:
                return [r for r in caplog.records if getattr(r, "event", None) == "routing_too_large"]

            await until(said, "the process saying the joining one's address past its routing bound")
        assert [(r.levelno, getattr(r, "peer", None), getattr(r, "limit", None)) for r in said()] == [
            (logging.ERROR, longest, 64 << 10)]
        assert "max_message_bytes=65536" in said()[0].getMessage() and "64 groups (shards)" in said()[0].getMessage()
