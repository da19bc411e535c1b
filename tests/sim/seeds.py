"""The seeds every test run simulates (``test_seeds_*.py``): ``ATP_SIM_SEEDS`` of them (default 240),
in chunks, split over two test files so that two test workers share them (``--dist loadfile`` hands
each file to one worker: all of them in one file held one worker for ten minutes)."""

from __future__ import annotations

import os

from tests.sim.driver import run_seed
from tests.sim.tally import Tally

SEEDS = int(os.environ.get("ATP_SIM_SEEDS", "240"))
CHUNK = 20
"""Seeds per test: each chunk stays well inside the per-test timeout on a busy 2-core machine. Chunks of 60
took about 65 s of CPU each, and 70 s to past the 120 s timeout on two busy cores: a failure, or (the timeout
raised inside an event-loop callback, which asyncio only logs) a worker held until the run was killed. Every
chunk of 20 of the default seeds still meets the fault counts asserted below."""
CHUNKS = list(range(0, max(SEEDS, 1), CHUNK))
HALF = (len(CHUNKS) + 1) // 2


async def check_chunk(first: int) -> None:
    """The seeds of the chunk starting at ``first``: every invariant holds, and the faults did happen
    (the seeds exercised them, not just the happy path)."""
    seeds = range(first, min(first + CHUNK, SEEDS))
    tally = Tally()
    for seed in seeds:
        await run_seed(seed, tally=tally)
    assert tally.crashes > len(seeds) and tally.stops, tally
    assert tally.cancelled > len(seeds) and tally.cancelled_pending and tally.cancelled_paused, tally
    assert tally.late_landed and tally.late_refused and tally.pauses and tally.doubt and tally.lost, tally
    assert tally.channel_faults and tally.channel_late_landed and tally.cross_shard > len(seeds), tally
    assert tally.snapshot_parts > len(seeds) and tally.staging_lost and tally.snapshot_refused, tally
    assert tally.snapshot_pieces and tally.pieces_refused, tally  # snapshots in several keys, their count changing
