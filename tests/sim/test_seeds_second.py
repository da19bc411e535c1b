"""The second half of the simulated seeds (``seeds.py``)."""

from __future__ import annotations

import pytest

from tests.sim.seeds import CHUNKS, HALF, check_chunk


@pytest.mark.parametrize("first", CHUNKS[HALF:])
async def test_invariants_hold_for_every_seed(first: int) -> None:
    await check_chunk(first)
