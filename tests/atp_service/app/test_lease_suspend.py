"""A host that stops counting time (R7): suspended, its ``CLOCK_MONOTONIC`` stands still while Redis's leases run
out and another process takes their groups. Woken, before its next renewal finds them lost, the process must
answer no read of those groups from its memory: it counts its leases on every clock of the host (``LeaseClock``),
and ``CLOCK_BOOTTIME`` counted the suspend."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
import redis.asyncio as aredis

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from atp_service.lease_clock import JUMP_S, LeaseClock
from atp_service.tasks import cancel_and_wait
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.engine.helpers import TwoShards
from tests.conftest import ServiceFactory, services_on
from tests.ports import held_port
from tests.waiting import until

LEASED = {"ownership": "leases", "lease_ms": 60_000, "shards": 1, "input_streams": ()}
REDIRECT = (("atp-routing", "redirect"),)
SUSPENDED_S = 120.0  # twice the lease


@pytest.fixture
async def start(redis_url: str) -> AsyncIterator[ServiceFactory]:
    async with services_on(redis_url, **LEASED) as start:
        yield start


def _suspended(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """The host back from a suspend of ``seconds``: ``CLOCK_BOOTTIME`` counted it, ``CLOCK_MONOTONIC`` (and so
    asyncio's timers) did not. The wall clock is left as it was: ``CLOCK_BOOTTIME`` alone must be enough."""
    real = time.clock_gettime

    def clock_gettime(clock: int) -> float:
        return real(clock) + (seconds if clock == time.CLOCK_BOOTTIME else 0.0)

    monkeypatch.setattr(time, "clock_gettime", clock_gettime)


async def _refused(call: Callable[[], object]) -> grpc.aio.AioRpcError | None:
    try:
        await call()  # type: ignore[misc]
    except grpc.aio.AioRpcError as refused:
        return refused
    return None


@pytest.mark.skipif(not hasattr(time, "CLOCK_BOOTTIME"), reason="CLOCK_BOOTTIME is Linux's")
async def test_a_process_woken_from_a_suspend_past_its_lease_answers_no_read_of_the_group_taken_meanwhile(
        start: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    await _woken_answers_no_stale_read(start, redis_url, monkeypatch)


@pytest.mark.skipif(not hasattr(time, "CLOCK_BOOTTIME"), reason="CLOCK_BOOTTIME is Linux's")
async def test_a_suspend_past_the_lease_ends_it_though_the_wall_clock_was_stepped_ahead_and_put_right_before(
        start: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A's wall clock stepped ten minutes ahead while it served (its groups unanswered till a renewal), then put
    right, its leases renewed since: a suspend of two minutes must still end them. The lead shared by every clock
    stayed ten minutes up, and CLOCK_BOOTTIME's two minutes never rose above it: A answered its stale memory."""
    wall = {"ahead_s": 0.0}
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + wall["ahead_s"])  # as read by the lease clock built after

    async def stepped_ahead_and_put_right(a: AtpService, a_client: AtpClient) -> None:
        wall["ahead_s"] = 600.0
        await _refused(lambda: a_client.stub.GetAvailability(_READ, metadata=REDIRECT, timeout=5))  # read meanwhile
        wall["ahead_s"] = 0.0
        assert a.membership is not None
        assert await a.membership.renew() == "", "A's leases renewed once its wall clock was put right"
        assert a.engine.serving() == [0], "A answers for the group again"

    await _woken_answers_no_stale_read(start, redis_url, monkeypatch, before=stepped_ahead_and_put_right)


_READ = pb.GetAvailabilityRequest(keys=[pb.PositionKey(sku="A", location="DC")])


async def _woken_answers_no_stale_read(
        start: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch,
        before: Callable[[AtpService, AtpClient], Awaitable[None]] | None = None) -> None:
    """A serves the group, B takes it while A's host is suspended twice the lease (``before``: what A's host went
    through first, A serving): woken, A answers no read of it from its memory."""
    a, a_client = await start(port=held_port(), host="127.0.0.1")
    assert a.membership is not None
    await until(lambda: 0 in a.membership.leases.held, "the group taken by A", 30)  # type: ignore[union-attr]
    b, b_client = await start(port=held_port(), host="127.0.0.1")
    assert b.membership is not None
    await cancel_and_wait(b.membership._tasks[1])  # B takes the group when told below, not at a balance of its own
    now_ms = int(time.time() * 1000)
    await a_client.record_events([receipt("in", "A", "DC", 10, t=now_ms - 1000)])
    await a_client.reserve("r", [("A", "DC", 3)], ttl_seconds=3600)
    if before is not None:
        await before(a, a_client)
    # A's host suspended: nothing of A runs (no renewal), Redis lets A's lease run out, B takes the group and
    # releases the reservation; A wakes, its monotonic clock behind by the whole suspend.
    await cancel_and_wait(a.membership._tasks[0])
    await cancel_and_wait(a.membership._tasks[1])
    _suspended(monkeypatch, SUSPENDED_S)
    r = aredis.Redis.from_url(redis_url)
    try:
        assert await r.delete(a.membership.leases.key(0)) == 1  # run out, as Redis's clock counted the suspend
    finally:
        await r.aclose()
    await b.membership.balance()
    assert 0 in b.membership.leases.held, "B took the group"
    assert (await b_client.release("r")).state == pb.RESERVATION_STATE_RELEASED
    # Woken: A answers no read of the group from its memory (stale: 3 reserved, "r" held), as its renewal would
    # find the lease lost (R7); refused as moved, or the fresh answer.
    try:
        answer = await a_client.stub.GetAvailability(_READ, metadata=REDIRECT, timeout=5)
    except grpc.aio.AioRpcError as refused:
        assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused
    else:
        assert answer.positions[0].reserved == 0, f"a stale read after the suspend: {answer.positions[0]}"
    try:
        record = await a_client.stub.GetReservation(pb.GetReservationRequest(reservation_id="r"), metadata=REDIRECT,
                                                    timeout=5)
    except grpc.aio.AioRpcError as refused:
        assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused
    else:
        assert record.reservation.state == pb.RESERVATION_STATE_RELEASED, f"a stale read: {record.reservation}"
    assert a.membership.table().routes[0].address != a.membership.address, "A still names itself the owner"


def test_a_lease_clock_moves_at_least_as_far_as_every_host_clock() -> None:
    """Injected clocks (seconds): between any two readings the lease clock moves at least as far as each clock (a
    lease renewed between them may have run out by any one); a clock that stands still or steps back moves it no
    less than ``mono``, and one put right after a step back no further than where it was."""
    clocks = {"mono": 100.0, "boot": 100.0, "wall": 1_700_000_000.0}
    lease = LeaseClock(mono=lambda: clocks["mono"], others=(lambda: clocks["boot"], lambda: clocks["wall"]))
    assert lease.now() == 100.0
    for name in clocks:
        clocks[name] += 1
    assert lease.now() == 101.0  # every clock agrees: the monotonic one
    clocks["boot"] += 30  # suspended 30 s: counted by CLOCK_BOOTTIME alone
    assert lease.now() == 131.0
    clocks["wall"] += 10  # the wall clock set forward 10 s since: by it a lease renewed at 131 is 10 s older
    assert lease.now() == 141.0
    clocks["wall"] += 25  # and on
    assert lease.now() == 166.0
    clocks["wall"] -= 3600  # the wall clock set back an hour: a lease is not lengthened
    clocks["mono"] += 1
    clocks["boot"] += 1
    assert lease.now() == 167.0
    clocks["wall"] += 3600  # and put right: back where it was ahead, no further
    assert lease.now() == 167.0
    clocks["boot"] += 20  # a suspend counted by CLOCK_BOOTTIME and the wall clock (Linux), read at once: once
    clocks["wall"] += 20
    assert lease.now() == 187.0
    clocks["mono"] += 5  # a pause counted by the monotonic clock alone (the others stood still)
    assert lease.now() == 192.0
    clocks["mono"] += 2  # a SIGSTOP counted by every clock: once
    clocks["boot"] += 2
    clocks["wall"] += 2
    assert lease.now() == 194.0
    clocks["wall"] += JUMP_S / 2  # the reads' own noise: no jump
    assert lease.now() == 194.0


def test_a_thread_switch_between_a_reading_s_clocks_is_never_taken_for_a_jump() -> None:
    """The monotonic clock is read after the others: a reading held up between them (another thread took the
    GIL) reads the others' lead low, and the next reading, held up or not, finds no lead to follow."""
    clocks = {"mono": 50.0, "wall": 50.0}
    lease = LeaseClock(mono=lambda: clocks["mono"], others=(lambda: clocks["wall"],))

    def held_up(seconds: float) -> None:
        for name in clocks:
            clocks[name] += seconds

    for _ in range(1000):
        lease._others = (lambda: (clocks["wall"], held_up(0.005))[0],)  # 5 ms pass after the wall clock's read
        lease.now()
        lease._others = (lambda: clocks["wall"],)
        held_up(1.0)
        assert lease.now() == clocks["mono"], "a thread switch counted as a jump of the wall clock"


def test_a_lease_deadline_is_passed_once_any_clock_says_so() -> None:
    """A deadline set from one reading (``Membership``: the renewal's send plus ``SAFETY`` of the lease) is passed
    when the suspend's clock moved past it, whatever the monotonic clock says."""
    clocks = {"mono": 10.0, "boot": 10.0}
    lease = LeaseClock(mono=lambda: clocks["mono"], others=(lambda: clocks["boot"],))
    deadline = lease.now() + 4.0
    clocks["mono"] += 1
    clocks["boot"] += 1 + 60  # suspended for a minute
    assert lease.now() > deadline
    assert clocks["mono"] < deadline, "the monotonic clock alone would have kept the lease"



def test_a_suspend_is_counted_though_the_wall_clock_was_once_stepped_ahead_and_put_right() -> None:
    """The wall clock stepped an hour ahead and put right (a bad time source, then a good one): a lease renewed since
    is still ended by a suspend that ``CLOCK_BOOTTIME`` counted (and the wall clock, as on Linux), shorter than that
    hour. One lead shared by every clock (the furthest any had drawn ahead) stayed an hour up, above every clock's
    lead since: no suspend shorter than the hour moved the lease clock, and a suspended host answered for groups
    another process had taken meanwhile (R7), as before ``CLOCK_BOOTTIME`` was read."""
    clocks = {"mono": 10.0, "boot": 10.0, "wall": 1_700_000_000.0}
    lease = LeaseClock(mono=lambda: clocks["mono"], others=(lambda: clocks["boot"], lambda: clocks["wall"]))
    clocks["wall"] += 3600  # stepped ahead: the leases of the moment shortened
    lease.now()
    clocks["wall"] -= 3600  # and put right
    lease.now()
    deadline = lease.now() + 4.0  # a renewal sent now
    clocks["mono"] += 1
    clocks["boot"] += 1 + 60  # suspended for a minute
    clocks["wall"] += 1 + 60
    assert lease.now() > deadline, "the suspend counted by no clock: the lease outlives it"
    assert lease.now() - deadline == 61.0 - 4.0


def test_a_process_owning_the_whole_keyspace_reads_no_host_clock_to_answer_a_read() -> None:
    """No lease (``ownership = all``): a read's owner check (``Engine.local``, on every Reserve, fact and read) has
    no deadline to pass, and asks no clock, as the shard's own check (``UNLEASED``) does not: the lease clock's three
    reads cost more than ten times ``time.monotonic``'s one."""
    rig = TwoShards()
    asked: list[str] = []
    rig.engine.lease_clock = LeaseClock(mono=lambda: asked.append("mono") or 0.0,
                                        others=(lambda: asked.append("boot") or 0.0,))
    asked.clear()
    assert rig.engine.local(0) is rig.engine.actors[0]
    assert asked == [], "a clock read where no lease is held"


async def test_a_taking_s_duration_is_not_the_lease_clock_s_jump(
        start: ServiceFactory, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """B's wall clock stepped an hour ahead while B takes a group: the lease clock moved an hour (the lease
    shortened), the taking did not take an hour (``atp_group_take_seconds``, the ``group_taken`` line): a duration
    is counted on the monotonic clock."""
    a, _ = await start(port=held_port(), host="127.0.0.1")
    assert a.membership is not None
    await until(lambda: 0 in a.membership.leases.held, "the group taken by A", 30)  # type: ignore[union-attr]
    b, _ = await start(port=held_port(), host="127.0.0.1")
    assert b.membership is not None
    await cancel_and_wait(b.membership._tasks[1])  # B takes the group when told below
    wall = {"ahead_s": 0.0}
    b.engine.lease_clock = LeaseClock(others=(lambda: time.time() + wall["ahead_s"],))  # before B holds a group
    acquire = b.membership.leases.acquire

    async def stepped_ahead_then_acquired(group: int) -> bool:
        wall["ahead_s"] = 3600.0
        return await acquire(group)

    b.membership.leases.acquire = stepped_ahead_then_acquired  # type: ignore[method-assign]
    await cancel_and_wait(a.membership._tasks[0])  # A's lease runs out (deleted, as its expiry would)
    await cancel_and_wait(a.membership._tasks[1])
    r = aredis.Redis.from_url(redis_url)
    try:
        assert await r.delete(a.membership.leases.key(0)) == 1
    finally:
        await r.aclose()
    caplog.set_level(logging.INFO, logger="atp_service.app.membership")
    await b.membership.balance()
    assert 0 in b.membership.leases.held, "B took the group"
    [taken] = [rec for rec in caplog.records if getattr(rec, "event", None) == "group_taken"]
    assert taken.duration_ms < 60_000, f"a taking of {taken.duration_ms} ms"  # type: ignore[attr-defined]
