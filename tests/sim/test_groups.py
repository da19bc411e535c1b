"""``--groups`` (``groups.py``): Reserve lines naming location groups, split over their members by each
channel's strategy, and positions made by facts taking their location's safety-stock default (Q4); with three
processes ``--forward-streams`` too (``streams.py``): ReserveStream items of groups other processes own sent to
their owners in the batch's turn, over outbound streams that fail (``streamcall.py``). With every other fault of
the simulation."""

from __future__ import annotations

import os

from tests.sim.driver import Driver
from tests.sim.tally import Tally

GROUPS_SEEDS = int(os.environ.get("ATP_SIM_GROUPS_SEEDS", "8"))
"""Seeds with location groups and safety-stock defaults, with one process and with three (forwarding stream items
to their owners): about 5 s of CPU for each."""


async def test_reserves_naming_location_groups_and_stream_items_sent_to_their_owners_hold_every_invariant() -> None:
    """Group lines take units where the strategy says, two groups and a plain line of one Reserve sharing a
    position, new positions keep their default safety stock, and a stream's items are decided by their groups'
    owners: every invariant holds — what the positions reserve is what the records hold (Q2/Q3), memory equals a
    replay of the log (E10), nothing sold twice (R2), one record per id across processes and a retry of a Reserve
    with group lines replays it (R5), channels follow durable state (C4), no route without a record."""
    tally = Tally()
    for seed in range(GROUPS_SEEDS):
        await Driver(seed, tally, groups=True).run(60)
        await Driver(seed, tally, processes=3, groups=True, forward_streams=True).run(60)
    assert tally.group_lines > GROUPS_SEEDS and tally.group_splits and tally.crashes and tally.kills, tally
    assert tally.stream_parts > GROUPS_SEEDS and tally.stream_items, tally
    assert tally.stream_doubts and tally.stream_faults, tally
