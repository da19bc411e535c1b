"""Per position, the reservations of one shard with units outstanding there (``Ledger.holds_at``)."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from ._keys import _SEP, pair_key
from ._model import Reservation


class _Holders(msgspec.Struct, gc=False):
    """The ids of the reservations holding units at one position (an insertion-ordered set).
    Wrapped so the map of them stays untracked: any container as a dict value (even an empty,
    untracked dict; a set is always tracked) makes the dict tracked for good. It holds only
    str, so it cannot be part of a reference cycle the collector would have to find."""

    ids: dict[str, None]


class HoldsIndex:
    """position -> ids of the reservations holding or committing units there, kept exact by
    ``update`` on every change of a record (and its undo)."""

    __slots__ = ("_at",)

    def __init__(self) -> None:
        self._at: dict[str, _Holders] = {}

    def add(self, sku: str, location: str, rid: str) -> None:
        """``update(None, rec)`` of a new record ``rid`` with units outstanding at one position only
        (every Reserve of one line)."""
        key = f"{sku}{_SEP}{location}"  # ``pair_key``, without its call
        holders = self._at.get(key)
        if holders is None:
            self._at[key] = _Holders({rid: None})
        else:
            holders.ids[rid] = None

    def update(self, before: Reservation | None, after: Reservation | None) -> None:
        if before is None and after is not None:  # a new record: nothing to take away
            rid = after.reservation_id
            for ln in after.lines:
                if ln.held or ln.committed:  # outstanding (neither is ever negative)
                    self.add(ln.sku, ln.location, rid)
            return
        was = {pair_key(ln.sku, ln.location) for ln in before.lines if ln.outstanding} if before else set()
        now = {pair_key(ln.sku, ln.location) for ln in after.lines if ln.outstanding} if after else set()
        rid = (after or before).reservation_id  # type: ignore[union-attr]
        for key in was - now:
            ids = self._at[key].ids
            ids.pop(rid, None)
            if not ids:
                del self._at[key]
        for key in now - was:
            holders = self._at.get(key)
            if holders is None:
                holders = self._at[key] = _Holders({})
            holders.ids[rid] = None

    def ids_at(self, sku: str, location: str) -> Iterable[str]:
        holders = self._at.get(pair_key(sku, location))
        return holders.ids if holders is not None else ()
