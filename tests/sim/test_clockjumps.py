"""``--clock-jumps`` (``jumps.py``): a clock jumping by hours mid-step — the world's (a host suspended), or one
host's wall clock set hours ahead and back — with every other fault of a seed, one process and two."""

from __future__ import annotations

import os

from tests.sim.driver import Driver
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
