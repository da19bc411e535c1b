"""The service clock (R6) when the host's wall clock is behind what the log already holds: a
restart after an NTP step backwards, a group taken from a process whose clock ran ahead, or a step
backwards while the service runs. It never goes below a logged timestamp, and it goes on counting
real time from there: TTLs keep running."""

from __future__ import annotations

import time

import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock, SystemClock
from reservation import Limits
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory
from tests.waiting import until

HOUR_MS = 3_600_000


async def test_a_restart_on_a_log_stamped_ahead_of_the_wall_clock_still_expires_holds_on_time_R3_R6(
        start_service: ServiceFactory) -> None:
    """The log holds timestamps an hour ahead of this host's wall clock (the previous instance ran
    before an NTP step backwards, or on a host whose clock ran ahead). The restarted service stamped
    every command with that newest logged timestamp until the wall clock caught up — its clock stood
    still for an hour, and no hold granted meanwhile expired: units held an hour past their TTL, lost
    sales. It now starts from that timestamp and counts real time on from it."""
    ahead = ManualClock(time.time_ns() // 1_000_000 + HOUR_MS)
    first, client = await start_service(clock=ahead, shards=1, limits=Limits(min_ttl_seconds=1))
    await client.record_events([receipt("stock", "A", "S1", 10)])
    await client.reserve("before", [("A", "S1", 1)], ttl_seconds=600)
    await first.stop(grace_s=0.1)

    second, client = await start_service(shards=1, limits=Limits(min_ttl_seconds=1))  # the host's own clock
    assert second.clock.now_ms() >= ahead.now_ms(), "a timestamp below one already logged (R6)"
    await client.reserve("fresh", [("A", "S1", 1)], ttl_seconds=1)

    async def fresh_expired() -> bool:
        return bool((await client.get_reservation("fresh")).state == pb.RESERVATION_STATE_EXPIRED)

    await until(fresh_expired, "a 1 s hold expired", 30)
    (a,) = await client.availability([("A", "S1")])
    assert a.reserved == 1, "only the 600 s hold is still held"


def test_a_step_backwards_while_running_does_not_stop_the_clock_R6(monkeypatch: pytest.MonkeyPatch) -> None:
    """An NTP step backwards while the service runs: it returned the last timestamp until the wall
    clock caught up, so nothing expired for as long as the step. It goes on at the host's monotonic
    rate from where it was, and follows the wall clock again once that is ahead."""
    wall = [1_700_000_000_000 * 1_000_000]
    mono = [5_000_000_000]
    monkeypatch.setattr("atp_service.engine.clock.time.time_ns", lambda: wall[0])
    monkeypatch.setattr("atp_service.engine.clock.time.monotonic_ns", lambda: mono[0])
    clock = SystemClock()
    start = clock.now_ms()
    wall[0] -= HOUR_MS * 1_000_000  # stepped an hour back
    mono[0] += 2_000 * 1_000_000
    wall[0] += 2_000 * 1_000_000
    assert clock.now_ms() == start + 2_000
    wall[0] += 2 * HOUR_MS * 1_000_000  # stepped forward past it: followed
    assert clock.now_ms() == start + HOUR_MS + 2_000
