"""The input-stream readers time their passes, claims and owners' waits on the world's clock (``inputreaders.
world_ticks``, ``StreamIngestor``'s ``ticks``), not on the host's: a seed goes the same way however fast the host."""

from __future__ import annotations

from tests.sim.inputcluster import InputsClusterDriver
from tests.sim.tally import Tally

CUT_SEED = 0
"""``--input-streams --processes 3 --partition --suspends --new-addresses``: passes over a reader's own pending
entries cut short at their deadline (``PENDING_PASS_S``), a process stopped or suspended in the middle of one."""


def _driver(tally: Tally) -> InputsClusterDriver:
    return InputsClusterDriver(CUT_SEED, 3, tally, partition=True, suspends=True, new_addresses=True)


async def test_a_pass_over_a_readers_pending_entries_ends_at_its_deadline_on_the_worlds_clock() -> None:
    """A process stopped in the middle of a pass over its own pending entries for longer than ``PENDING_PASS_S`` of
    the world's time goes on, once continued, with new entries and the rest of its pass next (``_retry_pending``), as
    the service does; and the invariants of ``--input-streams`` hold. (The readers' passes were never cut short in
    the model: it moved their deadline out of reach, the host's clock being no part of a seed.)"""
    tally = Tally()
    await _driver(tally).run(60)
    assert tally.input_passes_cut, tally

