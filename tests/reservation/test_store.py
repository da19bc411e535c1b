"""PositionStore's block and single-position reads of available (C1 curation input) against Quantities."""

from __future__ import annotations

import random

import numpy as np
import pytest

from reservation._store import ON_HAND, RESERVED, SAFETY, PositionStore


@pytest.mark.parametrize("channel_locations", [3, 40])  # a narrow channel (few DCs), a wide one (most stores)
def test_available_block_equals_per_position_reads(channel_locations: int) -> None:
    rng = random.Random(channel_locations)
    store = PositionStore(rows=4, cols=2)  # small, so the store grows while filled
    skus = [f"s{i}" for i in range(30)]
    locations = [f"l{j}" for j in range(50)]
    for _ in range(600):
        sku, loc = rng.choice(skus), rng.choice(locations)
        store.add(sku, loc, rng.choice((ON_HAND, RESERVED, SAFETY)), rng.randint(-5, 20))
    asked_skus = [*rng.sample(skus, 12), "never-seen"]
    asked_locs = [*rng.sample(locations, channel_locations - 1), "nowhere"]
    available, present = store.available_block(store.rows(asked_skus), store.columns(asked_locs))
    assert available.shape == present.shape == (len(asked_skus), len(asked_locs))
    for i, sku in enumerate(asked_skus):
        for j, loc in enumerate(asked_locs):
            exists = store.exists(sku, loc)
            assert present[i, j] == exists
            assert available[i, j] == (store.get(sku, loc).available if exists else 0)
            assert store.available(sku, loc) == (store.get(sku, loc).available if exists else None)


def test_available_block_of_nothing_is_empty() -> None:
    store = PositionStore()
    available, present = store.available_block(np.array([], dtype=np.intp), store.columns(["x"]))
    assert available.shape == present.shape == (0, 1)


def test_the_arrays_grow_in_steps_and_keep_every_value() -> None:
    """300 locations take at most a quarter more columns, not 512; 3,000 SKUs at most an eighth more rows."""
    store = PositionStore()
    for s in range(3000):
        for loc in (0, 150, 299) if s % 10 else range(300):
            store.add(f"s{s}", f"l{loc}", ON_HAND, s + loc)
    assert 300 <= store._q.shape[2] <= 300 * 5 // 4
    assert 3000 <= store._q.shape[1] <= 3000 * 9 // 8 + 256
    assert store.get("s2999", "l299").on_hand == 2999 + 299 and store.get("s0", "l1").on_hand == 1
    assert len(store) == 300 * 300 + 2700 * 3
