"""``atp_group_clock_lead_seconds`` and ``atp_retention_seconds`` (R3, R6), on real Redis and real leased services.
A group taken from a process whose clock ran ahead counts on from that process's newest stamp (``GroupClock``)
until its new host's clock passes it: its commands are stamped ahead of the true time by that lead, which
``atp_clock_offset_seconds`` (the process's own clock against Redis's ``TIME``) does not show. The alerts on
the clock promise (``ATPClockAdrift``, ``ATPClockPromiseAtRisk``) add the lead to the offset and compare the
sum with a sixteenth of the retention, exported for them."""

from __future__ import annotations

import time

from atp_service import AtpService, ManualClock
from tests.atp_service.app.test_processes import SHARDS, owned
from tests.atp_service.edge.test_api import receipt
from tests.conftest import services_on
from tests.ports import held_port
from tests.waiting import until

AHEAD_MS = 5 * 60_000
"""How far the first process's clock runs ahead of the second's (a host whose time source failed)."""


def _sample(service: AtpService, name: str) -> float | None:
    return service.metrics.registry.get_sample_value(name)


async def test_a_group_taken_from_a_process_ahead_shows_its_lead_and_the_retention_is_exported(
        redis_url: str) -> None:
    now = int(time.time() * 1000)
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=(), maintenance_interval_ms=50) as start:
        ahead, client = await start(clock=ManualClock(now + AHEAD_MS), port=held_port(), host="127.0.0.1")
        await until(lambda: owned(ahead) == set(range(SHARDS)), "the first process owns every group", 60)
        # Every group's log stamped by the clock ahead (it stands still: each stamp is exactly now + AHEAD_MS).
        await client.record_events([receipt(f"in-{n}", f"SKU-{n}", "DC", 5, t=now) for n in range(4 * SHARDS)])
        await client.close()
        await ahead.stop()
        taker, _ = await start(clock=ManualClock(now), port=held_port(), host="127.0.0.1")
        await until(lambda: owned(taker) == set(range(SHARDS)), "the second process owns every group", 60)
        assert taker.engine is not None
        stamped = {actor.ledger.clock for actor in taker.engine.actors}
        assert now + AHEAD_MS in stamped, stamped  # the groups' logs carry the first process's stamps
        # Its own clock is not ahead (the offset stays about 0); the groups it took run ahead of it by the whole gap.
        await until(lambda: _sample(taker, "atp_group_clock_lead_seconds") == AHEAD_MS / 1000,
                    "the lead of the groups taken measured", 60)
        assert _sample(taker, "atp_retention_seconds") == taker.config.limits.retention_ms / 1000
