"""``--fact-times`` (``facttimes.py``): facts stamped in the future, within the allowed skew and past it
(E7), and late past the grace window (E6), with every other fault of the simulation."""

from __future__ import annotations

import os

from tests.sim.driver import Driver
from tests.sim.tally import Tally

FACT_TIMES_SEEDS = int(os.environ.get("ATP_SIM_FACT_TIMES_SEEDS", "2"))
"""Seeds with facts stamped in the future or late, with one process and with three: a few seconds."""


async def test_facts_stamped_ahead_or_late_are_refused_applied_or_quarantined_as_their_times_say() -> None:
    """A fact stamped past the skew is refused, never applied; one within it is applied once; a late one is
    quarantined (in the quarantine stream), never applied; none quarantined without a reason; late ones
    answered alike on one shard and on three (``shardcount``)."""
    tally = Tally()
    for seed in range(FACT_TIMES_SEEDS):
        await Driver(seed, tally, fact_times=True).run(60)
        await Driver(seed, tally, processes=3, fact_times=True).run(40)
    assert tally.fact_within and tally.fact_past and tally.fact_late, tally
