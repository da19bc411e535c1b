"""Random turns of processes balancing shard groups (``balancing_sim``): joins, kill -9, restarts,
partitions, graceful stops, processes that take nothing or fail some takings, long recoveries; after
a quiet spell every group a live process can take is served, the turns are still, nobody counts a
healthy process out, and healthy processes hold their shares. Wider: ``python -m
tests.atp_service.app.balancing_sim --scenarios 2000``."""

from __future__ import annotations

import pytest

from tests.atp_service.app.balancing_sim import run

SCENARIOS, CHUNK = 80, 20


@pytest.mark.parametrize("first", range(0, SCENARIOS, CHUNK))
def test_random_turns_end_served_still_and_agreed(first: int) -> None:
    bad = {}
    for seed in range(first, first + CHUNK):
        estate, found = run(seed)
        if found:
            bad[seed] = found + estate.log
    assert not bad, bad


def test_the_simulator_plays_every_event_it_names() -> None:
    """A simulator whose chaos never happened would hold its invariants trivially."""
    seen = " ".join(line for seed in range(12) for line in run(seed)[0].log)
    for event in (" join ", " down ", " back ", " restart ", " stop ", "takes=False", "recovery=5"):
        assert event in seen, event
