"""PositionStore's block and single-position reads of available (C1 curation input) against Quantities."""

from __future__ import annotations

import random

import numpy as np
import pytest

from reservation import _columns
from reservation._store import ON_HAND, RESERVED, SAFETY, PositionStore


@pytest.mark.parametrize("channel_locations", [3, 40])  # a narrow channel (few DCs), a wide one (most stores)
@pytest.mark.parametrize("dense_cells", [_columns.DENSE_CELLS, 0])  # built whole, or mapped per position
def test_available_block_equals_per_position_reads(channel_locations: int, dense_cells: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_columns, "DENSE_CELLS", dense_cells)
    rng = random.Random(channel_locations)
    store = PositionStore()  # 600 changes: runs move and the columns are packed while filled
    skus = [f"s{i}" for i in range(30)]
    locations = [f"l{j}" for j in range(50)]
    for _ in range(600):
        sku, loc = rng.choice(skus), rng.choice(locations)
        store.add(sku, loc, rng.choice((ON_HAND, RESERVED, SAFETY)), rng.randint(-5, 20))
    asked_skus = [*rng.sample(skus, 12), "never-seen"]
    asked_locs = [*rng.sample(locations, channel_locations - 2), "nowhere"]
    asked_locs.append(asked_locs[0])  # a location named twice reads twice
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


