"""A Reserve decided over a ledger with one record not shown (``Anew``): a part of an earlier order of its id, resolved
so long ago that its order's home may have forgotten that order, where a new order of that id reserves it
(``forgotten``, ``forgotten_now``), pure."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._limits import Limits
from ._model import TERMINAL, Fact, FactOutcome, Quantities, Reservation

if TYPE_CHECKING:
    from ._reserve import ReserveView


class Anew:
    """``view`` with the record ``reservation_id`` not shown (``forgotten``): a Reserve decided over it
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


def forgotten(part: Reservation | None, opened: int, limits: Limits) -> bool:
    """Whether ``part``, found where its order's Reserve reserves a part, is resolved, nothing pending, 3/4 of the
    retention or longer before its order opened (``opened``: its ``created_at``, by its home's clock): an earlier
    order's of that id, forgotten at its home before this one opened (R5) — resolved before its order (R3), forgotten
    a retention after that by the home's clock. Each clock leads the host furthest behind by under g < R/8
    (``GroupClock``: between its host's and the host furthest ahead), not always by the same lead (the home's falls
    back where its group is taken again from older data): by the home's clock it is over R - 2g > 3R/4 old, an own
    part its group replayed (``forgotten_now``) under R/2 + g. Two gaps (R/4) apart would not do. Reserved anew
    (``Anew``), never replayed as the new order's decision nor proof of a confirmation (``_order_losses``'
    ``was_confirmed``). Resolved after the order opened, or judged its own by its group as the order opened
    (``forgotten_now``), it is the order's own however long ago (R5, R7): so judged again by whatever decides the
    order later (as ``_order_losses._own`` does)."""
    return _resolved_before(part, opened - limits.retention_ms * 3 // 4)


def forgotten_now(part: Reservation | None, now: int, limits: Limits) -> bool:
    """``forgotten`` for an order opened just now, by its part's group's clock (``now``): half the retention, so that
    the home's clock, up to g ahead, judges a part replayed here its own later (``forgotten``). An order opened again
    as new (its home's record lost) meets its own parts resolved so long before as an earlier order's: nothing else
    tells them apart (that order's part holds the same)."""
    return _resolved_before(part, now - limits.retention_ms // 2)


def _resolved_before(part: Reservation | None, at: int) -> bool:
    """Whether ``part`` is resolved, nothing pending, last changed at ``at`` or before."""
    return part is not None and part.state in TERMINAL and part.pending is None and part.updated_at <= at
