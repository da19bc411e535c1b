"""Block reads against per-position reads (both available_block paths, rows/cols repeated or absent),
chained() against a per-cell scan; what the store refuses before it changes anything."""

from __future__ import annotations

import random

import numpy as np
import pytest

from reservation import Ledger, Limits, _columns
from reservation._bulk import CountRows
from reservation._columns import N_DELTAS
from reservation._segments import SINGLE_STEP
from reservation._store import ON_HAND, RESERVED, SAFETY, PositionStore


def filled(seed: int) -> PositionStore:
    rng = random.Random(seed)
    store = PositionStore()
    for _ in range(700):
        store.add(f"s{rng.randrange(25)}", f"l{rng.randrange(45)}", rng.choice((ON_HAND, RESERVED, SAFETY)),
                  rng.randint(-5, 20))
    return store


@pytest.mark.parametrize("dense_cells", [_columns.DENSE_CELLS, 0])
@pytest.mark.parametrize("seed", range(6))
def test_available_block_rows_and_cols_repeated_or_absent(seed: int, dense_cells: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_columns, "DENSE_CELLS", dense_cells)
    rng = random.Random(100 + seed)
    store = filled(seed)
    skus = [rng.choice([f"s{rng.randrange(25)}", "nope"]) for _ in range(rng.randint(1, 15))]
    locs = [rng.choice([f"l{rng.randrange(45)}", "nowhere"]) for _ in range(rng.randint(1, 20))]
    available, present = store.available_block(store.rows(skus), store.columns(locs))
    for i, s in enumerate(skus):
        for j, loc in enumerate(locs):
            want = store.available(s, loc)
            assert bool(present[i, j]) == (want is not None)
            assert int(available[i, j]) == (want or 0)


def test_chained_matches_a_scan() -> None:
    store = filled(3)
    rng = random.Random(3)
    seg = store._seg
    for row in range(seg.rows):
        run = seg.run(row)
        for slot in range(run.start, run.stop):
            if rng.random() < 0.3:
                seg.narrow[N_DELTAS, slot] = rng.randint(1, 99)
    for first in range(0, store.row_count + 3, 4):
        want = [(r, c) for r in range(first, min(first + 4, store.row_count)) for c in range(store.location_count)
                if store.head_at(r, c)]
        assert store.chained(first, 4) == want


def test_forget_of_a_missing_position_changes_nothing() -> None:
    """``find``'s -1 is never used as a slot: it would be the columns' last slot, another SKU's when
    the columns are full."""
    store = PositionStore()
    seg = store._seg
    locations = [f"l{j}" for j in range(SINGLE_STEP)]  # a run made one position at a time: this many slots
    store.add("other", locations[0], ON_HAND, 1)  # (other, the last location) is no position
    i = 0
    while seg.tail < seg.size:  # full runs until the columns are full
        for loc in locations:
            store.add(f"s{i}", loc, ON_HAND, 1)
            store.put_count(*store.locate(f"s{i}", loc), (5, "erp", "count@5", 1))
        i += 1
    victim = (f"s{i - 1}", locations[-1])
    assert store._seg.find(*store.locate(*victim)) == seg.size - 1
    uses = store.names._uses[store.names.find("erp")]
    with pytest.raises(LookupError, match=f"no position 'other' at '{locations[-1]}'"):
        store.forget("other", locations[-1])
    with pytest.raises(LookupError):
        store.forget_cells(np.array([store.rows(["other"])[0]]), store.columns([locations[-1]]))
    assert store.latest_count(*victim) == (5, "erp", "count@5", 1)
    assert store.names._uses[store.names.find("erp")] == uses


def test_a_block_naming_a_sku_twice_is_refused_before_anything_changes() -> None:
    """Two indices of one SKU would be two rows of one position (the edge's count_rows refuses it)."""
    ledger = Ledger(0, Limits())
    block = CountRows("erp", ["A", "A"], ["L"], np.array([0, 1], dtype=np.uint32), np.zeros(2, dtype=np.uint32),
                      np.array([5, 7], dtype=np.int64), np.array([100, 100], dtype=np.int64))
    with pytest.raises(ValueError, match="named twice"):
        ledger.load_counts(block)
    assert len(ledger.store) == 0 and not ledger.pending
    store = ledger.store
    rows, cols = store.cells(["B"], ["L"])
    with pytest.raises(ValueError, match="a position named twice"):
        store._seg.insert_many(np.repeat(rows, 2), np.repeat(cols, 2))
    assert len(store) == 0


def test_a_value_past_32_bits_changes_nothing() -> None:
    """A count's quantity and a safety stock live in int32 columns: a value past them is refused
    whole (numpy would wrap it silently), by explicit checks that ``python -O`` keeps."""
    store = PositionStore()
    store.set("A", "L", SAFETY, 3)
    cell = store.locate("A", "L")
    assert cell is not None
    with pytest.raises(ValueError, match="does not fit 32 bits"):
        store.set("A", "L", SAFETY, 2**31)
    with pytest.raises(ValueError, match="does not fit 32 bits"):
        store.set("B", "L", SAFETY, 2**32 + 3)
    with pytest.raises(ValueError, match="does not fit 32 bits"):
        store.put_count(*cell, (5, "erp", "count@5", 2**31))
    with pytest.raises(ValueError, match="does not fit 32 bits"):
        store.create_counted(*store.cells(["C"], ["L"]), np.array([2**31]), np.array([5]),
                             (store.names.acquire("erp"), np.array([store.names.acquire("count@5")], dtype=np.int32)),
                             np.zeros(1, dtype=np.int64))
    assert store.get("A", "L").safety_stock == 3 and store.latest_count("A", "L") is None
    assert not store.exists("B", "L") and not store.exists("C", "L") and len(store) == 1
