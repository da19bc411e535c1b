"""Recovery raises the process's clock to the newest timestamp its log holds (R6), on a real Redis and real
services: a process restarted on a host whose clock is behind stamps on from its log, never below it. Recovery
asked the clock for its floor with ``getattr`` and went on without one when the clock had none: a clock the
types accepted (``CountingClock`` did not declare ``advance_floor``) recovered with no floor and stamped below
what its log held. The protocol declares it now, and recovery calls it: a clock without one is never silently
left unfloored."""

from __future__ import annotations

import pytest

from atp_service import ManualClock
from tests.atp_service.edge.test_api import T0, receipt
from tests.conftest import ServiceFactory

AHEAD_MS = 60_000


class Unfloorable:
    """A clock with all a ``CountingClock`` had to have before, and no floor."""

    def __init__(self, now_ms: int) -> None:
        self._now = now_ms

    def now_ms(self) -> int:
        return self._now

    def mono_ns(self) -> int:
        return self._now * 1_000_000


async def test_a_restart_behind_its_log_stamps_on_from_it(start_service: ServiceFactory) -> None:
    first, client = await start_service(clock=ManualClock(T0 + AHEAD_MS))
    await client.record_events([receipt("in-1", "SKU-1", "DC", 5, t=T0)])
    await first.stop()
    again, _ = await start_service(clock=ManualClock(T0))
    assert again.clock.now_ms() == T0 + AHEAD_MS  # floored at its log's newest stamp, not at the host's T0


async def test_a_clock_without_a_floor_is_refused_not_recovered_unfloored(start_service: ServiceFactory) -> None:
    first, client = await start_service(clock=ManualClock(T0 + AHEAD_MS))
    await client.record_events([receipt("in-1", "SKU-1", "DC", 5, t=T0)])
    await first.stop()
    with pytest.raises(AttributeError, match="advance_floor"):
        await start_service(clock=Unfloorable(T0))  # type: ignore[arg-type]  # what the protocol now refuses
