"""A batch taken back (its append failed, R7) leaves none of the names it made: a SKU row or a location column that
only its positions used goes with them, within ``max_positions_per_shard`` (which counts positions), out of every
snapshot, and a restored shard equals a replayed one (E10). Kept, they grew with every made-up SKU and location sent
while Redis refused appends (at its maxmemory, unreachable, a slot moving, fenced)."""

from __future__ import annotations

import msgspec
import numpy as np

from reservation import Fact, FactKind, Ledger, LedgerSnapshot, Limits
from reservation._bulk import CountRows

from .test_store_undo import layout

T = 1_700_000_000_000


def fact(n: int, sku: str, location: str, quantity: int = 3) -> Fact:
    return Fact(f"e{n}", "pos", FactKind.RECEIPT, sku, location, quantity, T + n)


def taken_back(ledger: Ledger, ts: int) -> None:
    """The open batch sealed, its append refused: undone (``CommitPipeline._fail_in_flight``)."""
    _, undo, _ = ledger.seal(ts)
    ledger.revert(undo)


def names(ledger: Ledger) -> tuple[list[str], list[str]]:
    snap = ledger.store.snapshot()
    return snap.skus, snap.locations


def test_names_of_positions_taken_back_do_not_outgrow_the_position_bound() -> None:
    ledger = Ledger(0, Limits(max_positions_per_shard=10))
    for i in range(1000):  # a made-up SKU at a made-up location per batch, each append refused (Redis OOM)
        ledger.record_fact(fact(i, f"made-up-{i}", f"L{i}"))
        taken_back(ledger, T + i)
    store = ledger.store
    assert len(store) == 0
    assert store.row_count <= 10, store.row_count
    assert store.location_count <= 10, store.location_count
    assert len(store.snapshot().skus) <= 10


def test_a_load_of_counts_taken_back_leaves_no_row_nor_column() -> None:
    ledger = Ledger(0, Limits())
    ledger.record_fact(fact(0, "kept", "DC1"))
    ledger.commit(T)
    for b in range(3):  # a LoadCounts block of new SKUs at a new location and a known one, its append refused
        skus = [f"b{b}-sku-{i}" for i in range(300)]
        rows = CountRows("erp", skus, ["DC1", f"new-{b}"], np.repeat(np.arange(300, dtype="<u4"), 2),
                         np.tile(np.arange(2, dtype="<u4"), 300), np.full(600, 5, dtype=np.int64),
                         np.full(600, T + b, dtype=np.int64))
        ledger.load_counts(rows)
        taken_back(ledger, T + b)
    assert (ledger.store.row_count, ledger.store.location_count) == (1, 1)
    assert names(ledger) == (["kept"], ["DC1"])
    layout(ledger.store)


def test_a_shard_restored_after_batches_taken_back_equals_one_replayed_from_its_log_E10() -> None:
    limits = Limits()
    live, log = Ledger(0, limits), []
    live.record_fact(fact(0, "A", "L1", 9))
    log.append(live.commit(T))
    live.record_fact(fact(1, "A", "L2"))  # a new column, then a new row at a known column: in flight together
    first = live.seal(T + 1)
    live.record_fact(fact(2, "B", "L1"))
    live.set_safety_stock("C", "L3", 2)
    second = live.seal(T + 2)
    live.revert(second[1])  # the first failed: every batch after it is taken back too, newest first
    live.revert(first[1])
    layout(live.store)
    live.record_fact(fact(3, "D", "L4", 7))  # names that take the indices the undone ones had
    live.record_fact(fact(4, "A", "L4", 1))
    log.append(live.commit(T + 3))
    replayed = Ledger(0, limits)
    for entry in log:
        replayed.replay(entry)
    assert names(live) == names(replayed) == (["A", "D"], ["L1", "L4"])
    restored = Ledger.restore(0, limits, msgspec.msgpack.decode(msgspec.msgpack.encode(live.snapshot()),
                                                                type=LedgerSnapshot))
    for ledger in (live, restored):
        assert sorted(ledger.store.items()) == sorted(replayed.store.items())
        assert names(ledger) == names(replayed)


def test_a_snapshot_leaves_out_names_no_position_uses_and_its_restore_reads_every_position_alike() -> None:
    ledger = Ledger(0, Limits())
    ledger.store.cells(["ghost-1"], ["nowhere-1"])  # names left by batches taken back before they were dropped
    ledger.record_fact(fact(0, "A", "L1", 4))
    ledger.store.cells(["ghost-2"], ["nowhere-2"])
    ledger.record_fact(fact(1, "B", "L2", 5))
    ledger.record_fact(fact(2, "B", "L1", 6))
    ledger.commit(T + 2)
    restored = Ledger.restore(0, Limits(), msgspec.msgpack.decode(msgspec.msgpack.encode(ledger.snapshot()),
                                                                  type=LedgerSnapshot))
    assert names(restored) == (["A", "B"], ["L1", "L2"])
    assert sorted(restored.store.items()) == sorted(ledger.store.items())
    layout(restored.store)
    restored.record_fact(fact(3, "C", "L3"))  # counted per column as the live store counts them
    taken_back(restored, T + 3)
    assert names(restored) == (["A", "B"], ["L1", "L2"])

