"""How the position events other than facts apply: a shipment (R4) and a safety stock (Q4).

Each returns how to take itself back, for a batch whose append fails (R7); replay calls the same
functions, so live equals replay (E10).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from ._events import SafetyStockSet, Shipped
from ._facts import DELTA_RANK, SERVICE_SOURCE
from ._store import COMMITTED, ON_HAND, SAFETY, PositionStore
from ._undo import Undo, run_undo

if TYPE_CHECKING:
    from ._ledger import Ledger


def apply_shipped(ledger: Ledger, event: Shipped) -> Undo:
    """R4: committed and on_hand fall together; the shipment is ordered among facts by ``at`` (E1)."""
    store = ledger.store
    sku, loc, qty = event.sku, event.location, event.quantity
    row, col, slot, existed = store.place(sku, loc)
    _, delta, undo_fold = ledger.histories.fold_delta(
        (row, col), slot, (event.at, DELTA_RANK, SERVICE_SOURCE, event.ref), -qty)
    store.add(sku, loc, COMMITTED, -qty)
    store.add(sku, loc, ON_HAND, delta)

    def undo() -> None:
        store.add(sku, loc, COMMITTED, qty)
        store.add(sku, loc, ON_HAND, -delta)
        if undo_fold is not None:
            run_undo(undo_fold)
        if not existed:
            ledger.forget_position(sku, loc)

    return undo


def apply_safety_stock(store: PositionStore, event: SafetyStockSet) -> Undo:
    existed = store.exists(event.sku, event.location)
    old = store.get(event.sku, event.location).safety_stock
    store.set(event.sku, event.location, SAFETY, event.quantity)
    if not existed:
        return functools.partial(store.forget, event.sku, event.location)
    return lambda: store.set(event.sku, event.location, SAFETY, old)
