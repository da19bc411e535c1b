"""``--clock-jumps`` (``jumps.py``): a clock jumping by hours mid-step — the world's (a host suspended), or one
host's wall clock set hours ahead and back — with every other fault of a seed, one process and two."""

from __future__ import annotations

import os

import pytest

from atp_service.engine.clock import ManualClock, SystemClock
from tests.sim import jumps
from tests.sim.checks import Violation
from tests.sim.driver import Driver
from tests.sim.jumps import HOUR_MS, ClockJumps
from tests.sim.tally import Tally

CLOCK_JUMPS_SEEDS = int(os.environ.get("ATP_SIM_CLOCK_JUMPS_SEEDS", "2"))
"""Seeds with one process and with two whose clocks jump: about 1 s of CPU each."""


async def test_clocks_jumping_by_hours_lose_no_reservation_and_never_stamp_back() -> None:
    """Every hold running out at once, a group's clock hours ahead of the world's and then its host's wall clock
    back where it was, a restart while it is behind the log's stamps: no stamp below one logged (R6), no hold
    expired before its TTL by its group's stamps (R3), nothing acknowledged lost (R7), nothing oversold (R2),
    memory equal to a replay of the log (E10), every shard answering."""
    tally = Tally()
    for seed in range(CLOCK_JUMPS_SEEDS):
        await Driver(seed, tally, clock_jumps=True).run(60)
        await Driver(seed, tally, processes=2, clock_jumps=True).run(60)
    assert tally.clock_jumps > 2 * CLOCK_JUMPS_SEEDS and tally.crashes and tally.taken_ahead, tally


class StandingStill(SystemClock):
    """A service clock that repeats its newest stamp while its wall clock is behind it (what ``SystemClock`` did
    before it counted on at the monotonic rate): every TTL stopped until the wall clock caught up."""

    __slots__ = ()

    def now_ms(self) -> int:
        counted = SystemClock.now_ms(self)
        return self._anchor_ms if self._wall_ns() // 1_000_000 < counted else counted


@pytest.mark.parametrize(("clock", "caught"), [(SystemClock, False), (StandingStill, True)])
def test_a_service_clock_that_stops_behind_a_wall_clock_set_back_is_caught_R6(
        monkeypatch: pytest.MonkeyPatch, clock: type[SystemClock], caught: bool) -> None:
    """A host's wall clock set an hour ahead, then back where it was, a second passing after: the service clock
    must count that second on (R6: TTLs keep counting). One standing still at its newest stamp held every other
    invariant over 30 seeds with two processes (its holds kept for hours): the step's end tells it now."""
    monkeypatch.setattr(jumps, "SystemClock", clock)
    world = ManualClock()
    jumping = ClockJumps(0, Tally(), world)
    service = jumping.clock_for()
    jumping.ahead[jumps.HOST] += HOUR_MS
    world.advance(1000)
    jumping.counted()  # it followed its wall clock an hour ahead
    jumping.ahead[jumps.HOST] -= HOUR_MS  # set back where it was
    world.advance(1000)
    if caught:
        with pytest.raises(Violation, match=r"^R6: host's service clock moved 0 ms while 1000 ms passed"):
            jumping.counted()
    else:
        jumping.counted()
        assert service.now_ms() == world.now_ms() + HOUR_MS
