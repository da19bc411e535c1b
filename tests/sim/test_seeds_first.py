"""The first half of the simulated seeds (``seeds.py``)."""

from __future__ import annotations

import pytest

from tests.sim.seeds import CHUNKS, HALF, SEEDS, check_chunk


def test_seeds_are_simulated() -> None:
    assert SEEDS > 0, "ATP_SIM_SEEDS=0 would pass without simulating anything"


@pytest.mark.parametrize("first", CHUNKS[:HALF])
async def test_invariants_hold_for_every_seed(first: int) -> None:
    await check_chunk(first)
