"""Several processes (``ownership = leases``) whose host clocks disagree (R3, R6): a group taken
from a process whose clock ran ahead is stamped on from its own log, without moving the clock of
the groups the taking process already served."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from reservation import Limits
from tests.atp_service.app.test_processes import SHARDS, balanced, members_read, owned, owner_of, routed
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory, services_on
from tests.ports import held_port
from tests.waiting import until

HOUR_MS = 3_600_000


@pytest.fixture
async def start_process(redis_url: str) -> AsyncIterator[ServiceFactory]:
    """Leases long enough for a busy host's stalls (a 600 ms one lapsed there between two calls: the
    second was refused GROUP_MOVED while its group was taken again); turns of 200 ms take a stopped
    process's groups at once."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=(), limits=Limits(min_ttl_seconds=1)) as start:
        yield start


async def test_taking_a_group_from_a_process_whose_clock_ran_ahead_expires_no_hold_early_R3_R6(
        start_process: ServiceFactory) -> None:
    """Process A's host clock runs an hour ahead; B's is right. When B took A's groups, its one
    clock was raised to A's newest logged timestamp (R6) for every group it served, so each hold B
    had granted with a TTL under an hour expired at once — a shopper's units gone from the basket
    minutes early, the stock offered again. The groups B already served keep counting on B's clock."""
    ahead = ManualClock(time.time_ns() // 1_000_000 + HOUR_MS)
    a = await start_process(clock=ahead, port=held_port(), host="127.0.0.1")
    b = await start_process(port=held_port(), host="127.0.0.1")
    running = [a, b]
    await members_read(running)
    await until(lambda: balanced(running) and routed(running), "the groups spread over the two processes", 60)
    skus = [f"k{i}" for i in range(64)]
    at_a = next(s for s in skus if owner_of(running, s) is a)
    at_b = next(s for s in skus if owner_of(running, s) is b)
    await a[1].record_events([receipt("in-a", at_a, "DC", 10)])  # A's group logs an entry stamped an hour ahead
    await b[1].record_events([receipt("in-b", at_b, "DC", 10)])
    await b[1].reserve("basket", [(at_b, "DC", 2)], ttl_seconds=600)

    await a[0].stop(grace_s=0.1)
    await until(lambda: owned(b[0]) == set(range(SHARDS)), "B owns every group", 60)
    # A 1 s hold at B's group, seen expired: B's housekeeping has run past the taking.
    await b[1].reserve("probe", [(at_b, "DC", 1)], ttl_seconds=1)

    async def probe_expired() -> bool:
        return bool((await b[1].get_reservation("probe")).state == pb.RESERVATION_STATE_EXPIRED)

    await until(probe_expired, "a 1 s hold expired", 30)
    assert (await b[1].get_reservation("basket")).state == pb.RESERVATION_STATE_HELD, \
        "a 600 s hold expired minutes after it was granted (R3)"
    # The taken group goes on from its own log: never stamped below what A logged there (R6).
    await b[1].reserve("later", [(at_a, "DC", 1)], ttl_seconds=600)
    assert (await b[1].get_reservation("later")).create_time.ToMilliseconds() >= ahead.now_ms()
