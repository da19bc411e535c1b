"""Segments under every structural change, with every invariant of the layout checked after each step:
runs inside the used columns, never overlapping, sorted; free slots zero; the find cache true."""

from __future__ import annotations

import random

import numpy as np
import pytest

from reservation import _segments
from reservation._segments import Segments, spans


def check(seg: Segments, model: dict[tuple[int, int], tuple[int, ...]]) -> None:
    size = seg.size
    caps = seg._cap[: seg.rows].astype(np.int64)
    assert seg.tail == int(caps.sum()) + seg.garbage, "tail = caps + garbage"
    assert seg.tail <= size and seg.garbage >= 0
    owned = np.zeros(size, dtype=np.int64)
    live = np.zeros(size, dtype=np.bool_)
    for row in range(seg.rows):
        start, length, cap = int(seg._start[row]), int(seg._len[row]), int(seg._cap[row])
        assert 0 <= length <= cap
        if cap:
            assert start + cap <= seg.tail
            owned[start: start + cap] += 1
        cols = seg.col[start: start + length]
        assert (np.diff(cols) > 0).all()
        live[start: start + length] = True
    assert (owned <= 1).all(), "runs overlap"
    assert not seg.wide[:, ~live].any() and not seg.narrow[:, ~live].any() and not seg.col[~live].any(), \
        "a slot holding no position is not zero"
    assert seg.positions() == len(model)
    for (row, col), values in model.items():
        slot = seg.find(row, col)
        assert slot >= 0
        assert tuple(seg.wide[:, slot].tolist()) + tuple(seg.narrow[:, slot].tolist()) == values
    # the one-entry cache names a live position at its true slot
    if seg._hit_row >= 0:
        run = seg.run(seg._hit_row)
        assert run.start <= seg._hit_slot < run.stop and seg.col[seg._hit_slot] == seg._hit_col


def values(step: int, k: int) -> tuple[int, ...]:
    v = step * 1000 + k + 1
    return (v, -v, 2 * v, 3 * v, v, -v, v + 7, v + 8, v + 9)


def write(seg: Segments, slot: int, vals: tuple[int, ...]) -> None:
    seg.wide[:, slot] = vals[:4]
    seg.narrow[:, slot] = vals[4:]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("table_cells", [0, 10**9])  # find_many by binary search, or by a table of the rows
def test_every_op_keeps_the_invariants(seed: int, table_cells: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_segments, "TABLE_CELLS_PER_PAIR", table_cells)
    rng = random.Random(seed)
    seg = Segments(rows=1, slots=1)
    model: dict[tuple[int, int], tuple[int, ...]] = {}
    ncols = rng.choice([3, 12, 40])
    for step in range(250):
        if rng.random() < 0.08 or not seg.rows:
            seg.add_row()
        absent = [(r, c) for r in range(seg.rows) for c in range(ncols) if (r, c) not in model]
        roll = rng.random()
        if roll < 0.3 and absent:
            row, col = rng.choice(absent)
            if model and rng.random() < 0.5:  # warm the cache on a neighbour first
                seg.find(*rng.choice(list(model)))
            slot = seg.insert(row, col)
            vals = values(step, 0)
            write(seg, slot, vals)
            model[(row, col)] = vals
        elif roll < 0.5 and absent:
            cells = rng.sample(absent, min(len(absent), rng.randint(1, 50)))
            if model:
                seg.find(*rng.choice(list(model)))
            rows, cols = (np.array(x, dtype=np.intp) for x in zip(*cells, strict=True))
            slots = seg.insert_many(rows, cols)
            for k, (cell, slot) in enumerate(zip(cells, slots.tolist(), strict=True)):
                vals = values(step, k)
                write(seg, slot, vals)
                model[cell] = vals
        elif roll < 0.7 and model:
            cell = rng.choice(list(model))
            if rng.random() < 0.5:
                seg.find(*rng.choice(list(model)))
            seg.remove(*cell)
            del model[cell]
        elif roll < 0.85 and model:
            cells = rng.sample(list(model), min(len(model), rng.randint(1, 30)))
            if rng.random() < 0.5:
                seg.find(*rng.choice(list(model)))
            rows, cols = (np.array(x, dtype=np.intp) for x in zip(*cells, strict=True))
            seg.remove_many(rows, cols)
            for cell in cells:
                del model[cell]
        else:  # find_many with absent rows/cols named -1, and cells never seen
            asked = [(rng.randint(-1, seg.rows - 1), rng.randint(-1, ncols + 2)) for _ in range(rng.randint(0, 30))]
            rows = np.array([a for a, _ in asked], dtype=np.intp)
            cols = np.array([b for _, b in asked], dtype=np.intp)
            got = seg.find_many(rows, cols).tolist()
            want = [seg.find(r, c) if r >= 0 and c >= 0 else -1 for r, c in asked]
            assert got == want
        check(seg, model)


def test_spans_matches_python() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(0, 6))
        starts = rng.integers(0, 100, n).astype(np.int64)
        lengths = rng.integers(0, 4, n).astype(np.int32)
        want = [s + k for s, ln in zip(starts.tolist(), lengths.tolist(), strict=True) for k in range(ln)]
        assert spans(starts, lengths).tolist() == want


def test_insert_many_into_a_row_with_room_but_no_positions() -> None:
    """A row that had positions, lost them all (cap > 0, len 0), then gets a block."""
    seg = Segments(rows=1, slots=1)
    r0, r1 = seg.add_row(), seg.add_row()
    for c in range(6):
        write(seg, seg.insert(r0, c), values(1, c))
        write(seg, seg.insert(r1, c), values(2, c))
    seg.remove_many(np.full(6, r0, dtype=np.intp), np.arange(6, dtype=np.intp))
    model = {(r1, c): values(2, c) for c in range(6)}
    check(seg, model)
    slots = seg.insert_many(np.full(3, r0, dtype=np.intp), np.array([5, 1, 3], dtype=np.intp))
    for k, s in enumerate(slots.tolist()):
        write(seg, s, values(3, k))
    model.update({(r0, 5): values(3, 0), (r0, 1): values(3, 1), (r0, 3): values(3, 2)})
    check(seg, model)


def test_restore_round_trip_then_keep_going() -> None:
    rng = random.Random(7)
    seg = Segments(rows=1, slots=1)
    model: dict[tuple[int, int], tuple[int, ...]] = {}
    for step in range(300):
        if rng.random() < 0.1 or not seg.rows:
            seg.add_row()
        row, col = rng.randrange(seg.rows), rng.randrange(30)
        if (row, col) in model:
            seg.remove(row, col)
            del model[(row, col)]
        else:
            write(seg, seg.insert(row, col), values(step, 0))
            model[(row, col)] = values(step, 0)
        if step % 50 == 49:
            wide, narrow, col_, starts, lengths, caps = seg.arrays()
            seg = Segments.restore(seg.tail, seg.garbage, [f.copy() for f in wide], [f.copy() for f in narrow],
                                   col_.copy(), (starts.copy(), lengths.copy(), caps.copy()))
            check(seg, model)
    check(seg, model)
