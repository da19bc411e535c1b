"""Positions packed per SKU (``_segments``) against a dict: single and block inserts and removes, moves
and packing, in random order; and the memory a sparse estate takes."""

from __future__ import annotations

import random

import numpy as np
import pytest

from reservation._segments import MIN_SLOTS, Segments
from reservation._store import ON_HAND, SAFETY, PositionStore


def _check(seg: Segments, model: dict[tuple[int, int], int]) -> None:
    """Every position holds its value, runs are sorted, and every other slot is zero."""
    live = np.zeros(seg.size, dtype=np.bool_)
    for row in range(seg.rows):
        run = seg.run(row)
        cols = seg.col[run]
        assert (np.diff(cols) > 0).all(), "a run is sorted by column, each column once"
        live[run] = True
    assert seg.positions() == len(model)
    assert not seg.wide[:, ~live].any() and not seg.narrow[:, ~live].any()
    for (row, col), value in model.items():
        slot = seg.find(row, col)
        assert slot >= 0 and seg.wide[0, slot] == value and seg.narrow[0, slot] == -value
    asked = list(model) + [(r, c) for r in range(seg.rows) for c in range(0, 40, 7) if (r, c) not in model]
    rows, cols = (np.array(x, dtype=np.intp) for x in zip(*asked, strict=True))
    found = seg.find_many(rows, cols)
    assert [seg.find(r, c) for r, c in asked] == found.tolist()


@pytest.mark.parametrize("seed", range(6))
def test_random_inserts_and_removes_keep_every_position(seed: int) -> None:
    rng = random.Random(seed)
    seg = Segments(rows=1, slots=1)
    model: dict[tuple[int, int], int] = {}
    for step in range(400):
        if rng.random() < 0.05 or not seg.rows:
            seg.add_row()
        absent = [(r, c) for r in range(seg.rows) for c in range(40) if (r, c) not in model]
        roll = rng.random()
        if roll < 0.4 and absent:
            row, col = rng.choice(absent)
            slot = seg.insert(row, col)
            seg.wide[0, slot], seg.narrow[0, slot] = step + 1, -(step + 1)
            model[(row, col)] = step + 1
        elif roll < 0.6 and absent:
            cells = rng.sample(absent, min(len(absent), rng.randint(1, 60)))
            rows, cols = (np.array(x, dtype=np.intp) for x in zip(*cells, strict=True))
            slots = seg.insert_many(rows, cols)
            seg.wide[0, slots], seg.narrow[0, slots] = step + 1, -(step + 1)
            model.update(dict.fromkeys(cells, step + 1))
        elif roll < 0.8 and model:
            row, col = rng.choice(list(model))
            seg.remove(row, col)
            del model[(row, col)]
        elif model:
            cells = rng.sample(list(model), min(len(model), rng.randint(1, 30)))
            rows, cols = (np.array(x, dtype=np.intp) for x in zip(*cells, strict=True))
            seg.remove_many(rows, cols)
            for cell in cells:
                del model[cell]
        if step % 20 == 0:
            _check(seg, model)
    _check(seg, model)
    assert seg.garbage <= seg.size


def test_a_sparse_estate_costs_what_it_stocks() -> None:
    """3,000 SKUs x 300 locations, a tenth stocked, loaded a SKU at a time as a baseline is: the
    columns hold the positions and at most a sixteenth more (a grid would hold 900,000 cells)."""
    rng = np.random.default_rng(1)
    store = PositionStore()
    skus, locations = [f"s{i}" for i in range(3000)], [f"l{j}" for j in range(300)]
    for first in range(0, 3000, 500):
        cells = np.flatnonzero(rng.random(500 * 300) < 0.1)
        sku_rows, loc_cols = store.cells(skus[first: first + 500], locations)
        rows, cols = sku_rows[cells // 300], loc_cols[cells % 300]
        quantity = rng.integers(0, 100, len(cells))
        store.create_counted(rows, cols, quantity, np.full(len(cells), 5, dtype=np.int64),
                             (store.names.acquire("erp", len(cells)),
                              np.full(len(cells), store.names.acquire("count@5", len(cells)), dtype=np.int32)),
                             np.zeros(len(cells), dtype=np.int64))
    positions = len(store)
    assert 80_000 < positions < 100_000
    assert store._seg.size <= positions + positions // 16 + MIN_SLOTS
    assert store._seg.garbage == 0  # every SKU came whole in one block: nothing moved


def test_a_store_filled_one_position_at_a_time_reads_back_every_value() -> None:
    """Positions made by single facts, SKU rows and location columns interleaved, so runs move."""
    store = PositionStore()
    for s in range(300):
        for loc in (0, 150, 299) if s % 10 else range(300):
            store.add(f"s{s}", f"l{loc}", ON_HAND, s + loc)
            store.add(f"s{s}", f"l{loc}", SAFETY, 1)
    assert store.get("s299", "l299").on_hand == 299 + 299 and store.get("s0", "l1").on_hand == 1
    assert store.get("s1", "l1").on_hand == 0 and not store.exists("s1", "l1")
    assert len(store) == 30 * 300 + 270 * 3
    assert store.totals().safety_stock == len(store)
    assert [loc for loc, _ in store.sku_locations("s1")] == ["l0", "l150", "l299"]


@pytest.mark.parametrize("dtype", [np.intp, np.int32, np.uint32, np.uint64])
def test_find_many_takes_any_integer_columns(dtype: type) -> None:
    """LoadCounts hands uint32 indices around: a lookup must not turn them into floats (uint64 + int64)."""
    seg = Segments()
    for _ in range(3):
        seg.add_row()
    slots = seg.insert_many(np.array([0, 0, 1, 2], dtype=np.intp), np.array([1, 4, 2, 0], dtype=np.intp))
    rows, cols = np.array([0, 0, 1, 2, 2], dtype=dtype), np.array([1, 4, 2, 0, 3], dtype=dtype)
    assert seg.find_many(rows, cols).tolist() == [*slots.tolist(), -1]
