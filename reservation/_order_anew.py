"""A Reserve decided over a ledger with one record not shown (``Anew``): a part of an earlier order of its id, resolved
so long ago that its order's home may have forgotten that order, where a new order of that id reserves it
(``_order_losses.forgotten``), pure."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._model import Fact, FactOutcome, Quantities, Reservation

if TYPE_CHECKING:
    from ._reserve import ReserveView


class Anew:
    """``view`` with the record ``reservation_id`` not shown (``_order_losses.forgotten``): a Reserve decided over it
    decides anew and saves over that record, as over none — it holds no units (resolved), so none is moved for it."""

    def __init__(self, view: ReserveView, reservation_id: str) -> None:
        self._view, self._hidden = view, reservation_id

    def reservation(self, reservation_id: str) -> Reservation | None:
        return None if reservation_id == self._hidden else self._view.reservation(reservation_id)

    def quantities(self, sku: str, location: str) -> Quantities:
        return self._view.quantities(sku, location)

    def available(self, sku: str, location: str) -> int:
        return self._view.available(sku, location)

    def move_hold(self, sku: str, location: str, d_reserved: int, d_committed: int) -> None:
        self._view.move_hold(sku, location, d_reserved, d_committed)

    def ship(self, sku: str, location: str, quantity: int, at: int, ref: str) -> None:
        self._view.ship(sku, location, quantity, at, ref)

    def save(self, reservation: Reservation) -> None:
        self._view.save(reservation)

    def record_fact(self, fact: Fact) -> tuple[FactOutcome, str]:
        return self._view.record_fact(fact)
