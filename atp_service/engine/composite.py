"""Several paused shards seen as one ``View``: how a coordinator decides across shards (R2)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from reservation import Fact, FactOutcome, Ledger, Quantities, Reservation


class CompositeView:
    """Several paused shards seen as one: positions by SKU shard, the record on its home shard."""

    def __init__(self, ledgers: dict[int, Ledger], home: int, place: Callable[[str], int]) -> None:
        self._ledgers, self._home, self._place = ledgers, ledgers[home], place

    @property
    def ledgers(self) -> Iterable[Ledger]:
        """The paused shards' ledgers, ascending (a Reserve's turn expires their due holds first: R2, R3)."""
        return self._ledgers.values()

    def _for(self, sku: str) -> Ledger:
        return self._ledgers[self._place(sku)]  # KeyError = a shard that was not paused: a bug

    def quantities(self, sku: str, location: str) -> Quantities:
        return self._for(sku).quantities(sku, location)

    def available(self, sku: str, location: str) -> int:
        return self._for(sku).available(sku, location)

    def reservation(self, reservation_id: str) -> Reservation | None:
        return self._home.reservation(reservation_id)

    def move_hold(self, sku: str, location: str, d_reserved: int, d_committed: int) -> None:
        self._for(sku).move_hold(sku, location, d_reserved, d_committed)

    def ship(self, sku: str, location: str, quantity: int, at: int, ref: str) -> None:
        self._for(sku).ship(sku, location, quantity, at, ref)

    def save(self, reservation: Reservation) -> None:
        self._home.save(reservation)

    def record_fact(self, fact: Fact) -> tuple[FactOutcome, str]:
        return self._for(fact.sku).record_fact(fact)
