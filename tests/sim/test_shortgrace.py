"""``--short-grace`` (``shortgrace.py``): a grace window of seconds and a small seal threshold, so that shards
forget remembered facts, seal their open maps and free kept deltas (E8, E9) — under crashes, recoveries from
snapshots, appends in doubt, with facts stamped ahead or late, and old facts sent again; with one process each
instance starts with a grace of its own (``Graces``)."""

from __future__ import annotations

import os

from reservation import _dedupe
from reservation._dedupe import FactMemory
from reservation._facts import Histories
from tests.sim.driver import Driver
from tests.sim.tally import Tally

SHORT_GRACE_SEEDS = int(os.environ.get("ATP_SIM_SHORT_GRACE_SEEDS", "3"))
"""Seeds with a grace of 30 s, with one process (and facts stamped ahead or late) and with three: a few seconds."""


async def test_shards_forgetting_sealing_and_freeing_hold_every_invariant() -> None:
    """A resend of a fact forgotten is late, one remembered a duplicate: never applied twice (E8); on_hand is
    the fold of the log after kept deltas are freed (E2, E9); memory equals a replay of the snapshot and the
    log, but for what it forgot before its ``forgotten_before`` (E10); facts answered alike on one shard and
    three. The seal threshold and the product's methods are put back after."""
    tally = Tally()
    for seed in range(SHORT_GRACE_SEEDS):
        await Driver(seed, tally, fact_times=True, short_grace=True).run(60)
        await Driver(seed, tally, processes=3, short_grace=True).run(40)
    assert tally.forgets and tally.forgotten > tally.forgets and tally.seals and tally.freed, tally
    assert tally.old_known and tally.old_late and tally.crashes and tally.kills, tally
    assert tally.graces_grown and tally.forgotten_inside, tally  # ``forgotten_before`` restored, inside the window
    assert _dedupe.SEAL_AT == 16_384 and "counted" not in FactMemory.forget_old.__name__, "the run's patches stayed"
    assert "counted" not in Histories.sweep.__name__ and "counted" not in FactMemory._seal.__name__
