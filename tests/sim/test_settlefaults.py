"""``--settle-faults`` (``settlefaults.py``): the calls that settle a write in doubt fail too — the fence lost,
in doubt or landing late (past the token its shard went on with), the reads after it timing out — with every
other fault of the simulation."""

from __future__ import annotations

import os

from atp_service.storage import durability
from tests.sim.driver import Driver
from tests.sim.tally import Tally

SETTLE_FAULT_SEEDS = int(os.environ.get("ATP_SIM_SETTLE_FAULT_SEEDS", "6"))
"""Seeds whose settles fail, with one process and with three: about 4 s of CPU each."""


async def test_a_settle_whose_fence_or_reads_fail_tries_again_and_every_invariant_holds() -> None:
    """R7: a settle trusts what the log holds only after a fence it saw answered; a fence whose answer was lost
    (landed or not) or that lands late leaves the shard's token below Redis's fence, so its next appends are
    refused STALE and settled in turn. Memory equals a replay of the log (E10), nothing is sold twice (R2), the
    channels follow durable state (C4), and every shard answers again once Redis does (liveness)."""
    tally = Tally()
    for seed in range(SETTLE_FAULT_SEEDS):
        await Driver(seed, tally, settle_faults=True).run(60)
        await Driver(seed, tally, processes=3, settle_faults=True).run(60)
    assert tally.fence_faults > SETTLE_FAULT_SEEDS and tally.late_fences and tally.settle_reads_failed, tally
    assert durability.SETTLE_RETRY.first_s > 0, "the service's waits are given back after the run"


async def test_a_seed_with_settle_faults_replays_exactly() -> None:
    """The settle's tries again are turns of the event loop, not waits on the wall clock (``no_waits``): a seed
    takes one path, its faults drawn alike."""
    first, second = (Driver(54321, Tally(), processes=3, settle_faults=True) for _ in range(2))
    await first.run(30)
    await second.run(30)
    assert first.tally.fence_faults and first.trace == second.trace and first.tally == second.tally
    assert first.world.log.history == second.world.log.history
