"""Deterministic simulation: the real engine over a log that fails, loses and lands writes, with crashes.

CI runs ATP_SIM_SEEDS seeds (default 300); ``make sim SEEDS=100000`` runs more. A failure names the
seed, the last steps and the command that replays it.
"""

from __future__ import annotations

import os

from .driver import run_seed

SEEDS = int(os.environ.get("ATP_SIM_SEEDS", "300"))


async def test_invariants_hold_for_every_seed() -> None:
    recoveries = 0
    for seed in range(SEEDS):
        world = await run_seed(seed)
        recoveries += world.recoveries
    assert recoveries > SEEDS  # crashes did happen: the seeds exercised recovery, not just the happy path


async def test_a_seed_replays_exactly() -> None:
    first, second = await run_seed(12345), await run_seed(12345)
    assert first.log.history == second.log.history
