"""Housekeeping (``engine.maintenance``) on a real service and Redis, time moved by a manual clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from atp_service.engine import maintenance
from atp_service.engine.maintenance import EVICT_PER_TURN, EXPIRE_PER_TURN
from atp_service.engine.router import Engine
from reservation import Ledger, Limits, LogEntry, State, reserve_command
from reservation._events import ReservationSaved
from reservation._expiry import EXPIRY_SLACK
from tests.atp_service.edge.test_api import T0, receipt
from tests.conftest import ServiceFactory


async def test_holds_due_all_at_once_expire_a_bounded_number_per_turn_R3(start_service: ServiceFactory) -> None:
    """Many holds due at once (the service was down past their TTL, or the clock stepped forward):
    they expired in one turn, one log entry — a stall of every shard as long as the number due
    (~20 µs a hold), and an append that grows with it; past ``redis_timeout_s`` it was undone,
    requeued and tried whole again at every pass, and nothing expired. They expire a bounded
    number per turn, every one of them in the end."""
    clock = ManualClock(T0)
    service, client = await start_service(clock=clock)
    engine = service.engine
    assert engine is not None
    holds = 2 * EXPIRE_PER_TURN + 10
    await client.record_events([receipt("stock", "A", "S1", holds)])
    for first in range(0, holds, 1000):
        cmds = [reserve_command(reservation_id=f"r{n}", order_ref="o", channel="web", lines=[("A", "S1", 1)],
                                ttl_seconds=60, allow_partial=False, limits=engine.limits)
                for n in range(first, min(first + 1000, holds))]
        assert all(not isinstance(r, Exception) for r in await engine.reserve_many(cmds))
    per_entry: list[int] = []

    def count(_shard: int, entry: LogEntry) -> None:
        per_entry.append(sum(isinstance(e, ReservationSaved) and e.reservation.state == State.EXPIRED
                             for e in entry.events))

    engine.actors[engine.place("A")].listeners.append(count)
    clock.advance(60_000)
    deadline = time.monotonic() + 30
    while sum(per_entry) < holds:
        assert time.monotonic() < deadline, f"{sum(per_entry)} of {holds} holds expired after 30 s"
        await asyncio.sleep(0.02)
    assert max(per_entry) <= EXPIRE_PER_TURN, f"{max(per_entry)} holds expired in one turn"
    (a,) = await client.availability([("A", "S1")])
    assert a.reserved == 0 and a.available == holds


async def test_resolved_reservations_past_retention_all_at_once_are_forgotten_a_bounded_number_per_turn_R5(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole day's resolved reservations past their retention at once (the first pass after a
    restart that followed downtime) were forgotten in one turn of their shard: seconds at hundreds of
    thousands, with every shard, call and lease renewal waiting. A turn forgets at most
    ``EVICT_PER_TURN``; later passes forget the rest, and one still within its window is kept (R5)."""
    clock = ManualClock(T0)
    service, client = await start_service(clock=clock, limits=Limits(retention_ms=60_000))
    engine = service.engine
    assert engine is not None
    resolved = 2 * EVICT_PER_TURN + 10
    await client.record_events([receipt("stock", "A", "S1", resolved + 1)])
    for first in range(0, resolved, 1000):
        cmds = [reserve_command(reservation_id=f"r{n}", order_ref="o", channel="web", lines=[("A", "S1", 1)],
                                ttl_seconds=60, allow_partial=False, limits=engine.limits)
                for n in range(first, min(first + 1000, resolved))]
        assert all(not isinstance(r, Exception) for r in await engine.reserve_many(cmds))
    actor = engine.actors[engine.place("A")]
    clock.advance(60_000)  # every hold expires (resolved), a bounded number a turn
    deadline = time.monotonic() + 60
    while actor.ledger.live_reservations:
        assert time.monotonic() < deadline, f"{actor.ledger.live_reservations} holds still live after 60 s"
        await asyncio.sleep(0.02)
    clock.advance(30_000)
    await client.reserve("recent", [("A", "S1", 1)])
    await client.release("recent")
    forgotten_per_turn: list[int] = []
    work = engine._housekeeper._expire_work

    def counted(ledger: Ledger, now: int) -> None:
        before = len(ledger.reservations)
        work(ledger, now)
        forgotten_per_turn.append(before - len(ledger.reservations))

    monkeypatch.setattr(engine._housekeeper, "_expire_work", counted)
    clock.advance(31_000)  # past the retention of every expired hold, not of "recent"
    deadline = time.monotonic() + 60
    while sum(forgotten_per_turn) < resolved:
        assert time.monotonic() < deadline, f"{sum(forgotten_per_turn)} of {resolved} forgotten after 60 s"
        await asyncio.sleep(0.02)
    assert max(forgotten_per_turn) <= EVICT_PER_TURN, f"{max(forgotten_per_turn)} forgotten in one turn"
    assert list(actor.ledger.reservations) == ["recent"]
    assert not any(f"r{n}" in engine.routes.homes for n in range(resolved))
    assert (await client.get_reservation("recent")).state == pb.RESERVATION_STATE_RELEASED


async def test_a_pass_that_fails_on_a_bug_is_said_and_the_service_asks_to_be_restarted_R3(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only refusals and storage errors were caught: any other exception in a pass (a bug) ended
    the housekeeping task, and with it expiry, retention and snapshots, for good and unnoticed while
    health said SERVING. Now the service sees it: NOT_SERVING, and it stops to be restarted."""
    service, client = await start_service()
    assert service.engine is not None

    async def a_bug() -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(service.engine._housekeeper, "run_pass", a_bug)
    await asyncio.wait_for(service.failed.wait(), 30)
    stub = health_pb2_grpc.HealthStub(client.channel)
    answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_holds_released_early_leave_no_expiry_entries_for_their_whole_ttl_R3(
        start_service: ServiceFactory) -> None:
    """A hold confirmed or released before its TTL left its entry in the shard's expiry heap until
    the TTL passed — up to max_ttl_seconds (7 days), past the retention window and outside
    max_live_reservations_per_shard: a caller reserving and releasing grew it for a week. A
    maintenance turn drops the stale entries once they outnumber the live reservations."""
    clock = ManualClock(T0)
    service, client = await start_service(clock=clock)
    engine = service.engine
    assert engine is not None
    holds = EXPIRY_SLACK + 100
    await client.record_events([receipt("stock", "A", "S1", holds + 1)])
    cmds = [reserve_command(reservation_id=f"r{n}", order_ref="o", channel="web", lines=[("A", "S1", 1)],
                            ttl_seconds=engine.limits.max_ttl_seconds, allow_partial=False, limits=engine.limits)
            for n in range(holds + 1)]
    for first in range(0, len(cmds), 500):
        assert all(not isinstance(r, Exception) for r in await engine.reserve_many(cmds[first:first + 500]))
    for first in range(0, holds, 200):  # every hold but the last released long before its TTL
        await asyncio.gather(*(engine.release(f"r{n}", (), "") for n in range(first, min(first + 200, holds))))
    actor = engine.actors[engine.place("A")]
    assert actor.ledger.live_reservations == 1
    actor.request_maintenance()
    await actor.submit(lambda _ledger, _now: None)  # behind the maintenance turn in the mailbox
    assert len(actor.ledger._expiry) <= 2 * actor.ledger.live_reservations + EXPIRY_SLACK
    assert [rid for _, rid in actor.ledger._expiry] == [f"r{holds}"]  # the hold still held keeps its entry
    clock.advance(engine.limits.max_ttl_seconds * 1000)
    await engine.run_maintenance()
    assert actor.ledger.reservations[f"r{holds}"].state == State.EXPIRED


async def test_refused_reserves_with_new_ids_are_remembered_within_a_bound_R5(start_service: ServiceFactory) -> None:
    """Every Reserve leaves a record kept for the retention window, a refused one too (R5 answers its
    retry alike): a sold-out SKU hammered with new ids (bots at a launch) grew a shard's memory by
    ~600 bytes a call for a whole day, outside ``max_live_reservations_per_shard``, with nothing
    refused. Past ``max_resolved_reservations_per_shard`` a Reserve with a new id is refused
    naming it; a retry of one remembered is still answered, and once retention has passed the
    shard takes new ones again."""
    bound = 50
    clock = ManualClock(T0)
    service, client = await start_service(clock=clock, limits=Limits(
        max_live_reservations_per_shard=10, max_resolved_reservations_per_shard=bound, retention_ms=60_000))
    engine = service.engine
    assert engine is not None
    await client.record_events([receipt("stock", "A", "S1", 5)])
    ledger = engine.actors[engine.place("A")].ledger
    refused = []
    for n in range(3 * bound):
        try:
            answer = await client.reserve(f"bot-{n}", [("A", "S1", 6)])
            assert answer.state == pb.RESERVATION_STATE_REJECTED
        except grpc.aio.AioRpcError as exc:
            refused.append(exc)
        assert len(ledger.reservations) <= bound, f"{len(ledger.reservations)} reservations remembered"
    assert refused and all(exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for exc in refused)
    assert "max_resolved_reservations_per_shard" in (refused[0].details() or "")
    again = await client.reserve("bot-0", [("A", "S1", 6)])  # a retry of one remembered: its answer (R5)
    assert again.state == pb.RESERVATION_STATE_REJECTED
    clock.advance(60_001)
    deadline = time.monotonic() + 30
    while len(ledger.reservations) >= bound:
        assert time.monotonic() < deadline, "the refused reservations were never forgotten"
        await asyncio.sleep(0.02)
    assert (await client.reserve("after", [("A", "S1", 1)])).state == pb.RESERVATION_STATE_HELD


async def test_holds_spanning_shards_due_at_once_expire_together_not_one_coordinated_change_each_R3(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Holds whose lines span shards, due at once (downtime, a clock step forward): each was expired
    by a coordinated change of its own — a pause of every shard it spans and a log append per hold.
    A backlog drained at a few hundred holds a second (12,288: ~20 s; a million: most of an hour),
    their units still held meanwhile (Reserves refused, channels offered less), and a call to the
    first of those shards waited behind thousands of queued pauses (5.5 s measured). The holds a
    turn finds due are expired together, one coordinated change per set of shards they span."""
    monkeypatch.setattr(maintenance, "EXPIRE_PER_TURN", 50)
    clock = ManualClock(T0)
    holds = 2 * maintenance.EXPIRE_PER_TURN + 20
    engine, client, other = await held_across_two_shards(start_service, clock, holds)
    per_entry: list[int] = []

    def count(_shard: int, entry: LogEntry) -> None:
        expired = sum(isinstance(e, ReservationSaved) and e.reservation.state == State.EXPIRED for e in entry.events)
        if expired:
            per_entry.append(expired)

    for actor in engine.actors:
        actor.listeners.append(count)
    clock.advance(60_000)
    await until_expired(lambda: sum(per_entry), holds)
    assert len(per_entry) <= -(-holds // maintenance.EXPIRE_PER_TURN), f"{len(per_entry)} changes for {holds} holds"
    await all_free(client, ("A", other), holds)


async def test_holds_spanning_shards_due_at_once_expire_in_changes_of_bounded_lines_R3(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The holds a turn finds due across one set of shards (up to ``EXPIRE_PER_TURN``, 4,096) went
    in one coordinated change whatever their lines: at ``max_lines`` (200) each, ~800,000 lines — a
    log entry of tens of MB and a pause of every shard it spans while it is decided and encoded.
    A change now carries at most ``EXPIRE_LINES_PER_CHANGE`` lines; the rest go in further ones."""
    monkeypatch.setattr(maintenance, "EXPIRE_LINES_PER_CHANGE", 20)
    clock = ManualClock(T0)
    holds = 45  # two lines each: 90 lines, one change of them all before
    engine, client, other = await held_across_two_shards(start_service, clock, holds)
    expired: set[str] = set()
    lines_per_entry: list[int] = []

    def count(_shard: int, entry: LogEntry) -> None:
        saved = [e.reservation for e in entry.events
                 if isinstance(e, ReservationSaved) and e.reservation.state == State.EXPIRED]
        if saved:
            lines_per_entry.append(sum(len(r.lines) for r in saved))
            expired.update(r.reservation_id for r in saved)

    for actor in engine.actors:
        actor.listeners.append(count)
    clock.advance(60_000)
    await until_expired(lambda: len(expired), holds)
    assert max(lines_per_entry) <= maintenance.EXPIRE_LINES_PER_CHANGE, lines_per_entry
    await all_free(client, ("A", other), holds)


async def held_across_two_shards(start_service: ServiceFactory, clock: ManualClock,
                                 holds: int) -> tuple[Engine, AtpClient, str]:
    """A service on ``clock`` with ``holds`` holds of a 60 s TTL, each a line on "A" and one on a SKU
    of another shard (returned), both stocked with ``holds`` units."""
    service, client = await start_service(clock=clock)
    engine = service.engine
    assert engine is not None
    other = next(s for s in (f"B{i}" for i in range(100)) if engine.place(s) != engine.place("A"))
    await client.record_events([receipt("stock", sku, "S1", holds) for sku in ("A", other)])
    cmds = [reserve_command(reservation_id=f"r{n}", order_ref="o", channel="web",
                            lines=[("A", "S1", 1), (other, "S1", 1)], ttl_seconds=60, allow_partial=False,
                            limits=engine.limits) for n in range(holds)]
    assert all(not isinstance(r, Exception) for r in await engine.reserve_many(cmds))
    return engine, client, other


async def until_expired(expired: Callable[[], int], holds: int) -> None:
    deadline = time.monotonic() + 60  # a bound, not a timing
    while expired() < holds:
        assert time.monotonic() < deadline, f"{expired()} of {holds} holds expired after 60 s"
        await asyncio.sleep(0.02)


async def all_free(client: AtpClient, skus: tuple[str, ...], holds: int) -> None:
    for sku in skus:
        (a,) = await client.availability([(sku, "S1")])
        assert a.reserved == 0 and a.available == holds
