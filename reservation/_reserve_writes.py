"""A Reserve of one line on one shard's ledger, written out (``Ledger`` builds on it): every Reserve's
hot path, without ``emit``'s dispatch, a second lookup of its position or a closure for its undo.

Each change is applied first and then logged with its undo, as ``emit`` does: a change that raises
leaves no event and no undo, and a batch whose append fails is taken back whole (R7, ``Ledger.revert``).
"""

from __future__ import annotations

from collections import deque
from heapq import heappush

from ._allocate import GroupPolicy
from ._events import Event, HoldMoved, ReservationSaved
from ._holds import HoldsIndex
from ._model import LineRecord, Outcome, Reservation, ReserveCommand, State
from ._store import PositionStore
from ._undo import Undo

_HELD, _REJECTED = State.HELD, State.REJECTED
_GRANTED, _INSUFFICIENT = Outcome.GRANTED, Outcome.INSUFFICIENT


class ReserveWrites:
    """A ledger's moves of held units and its Reserves of one line (mixed in: they need its state, nothing else)."""

    store: PositionStore
    reservations: dict[str, Reservation]
    live_reservations: int
    _expiry: list[tuple[int, str]]
    _resolved: deque[tuple[int, str]]
    _holds_at: HoldsIndex
    _events: list[Event]
    _undo: list[Undo]

    def move_hold(self, sku: str, location: str, d_reserved: int, d_committed: int) -> None:
        """``emit(HoldMoved(...))`` without its dispatch, ``_apply_hold`` written out with the move's own
        values: applied first, so a move that raises leaves no event and no undo."""
        store = self.store
        if store.move(sku, location, d_reserved, d_committed):
            self._undo.append((store.move, sku, location, -d_reserved, -d_committed))
        else:  # it created the position
            self._undo.append((store.forget, sku, location))
        self._events.append(HoldMoved(sku, location, d_reserved, d_committed))

    def reserve_new(self, cmd: ReserveCommand, now: int, groups: GroupPolicy | None) -> Reservation | None:
        """``_reserve._reserve_line`` of a Reserve of one line naming a location (not a group of
        ``groups``) with an id this ledger holds no record of (most Reserves): granted whole where it
        fits, else INSUFFICIENT (R2). None, nothing changed: not such a Reserve, or its position does
        not exist yet (``_reserve.reserve_otherwise`` decides it). The position's ``available`` and
        its hold in one lookup (``PositionStore.hold``); the record saved as ``save`` would
        (``_apply_reservation`` with no old record to compare)."""
        lines = cmd.lines
        if len(lines) != 1:
            return None
        line = lines[0]
        sku, location, quantity = line.sku, line.location, line.quantity
        rid = cmd.reservation_id
        if rid in self.reservations or (groups is not None and location in groups.groups):
            return None  # R5: a retry is answered by its record, never decided again
        store = self.store
        a = store.hold(sku, location, quantity)  # held only where it fits: never oversold
        if a is None:  # no such position (nothing changed): the general way decides it (``_reserve_line``)
            return None
        if quantity > a:  # not held: INSUFFICIENT
            return self._refuse_new(cmd, sku, location, quantity, a, now)
        undo = self._undo
        undo.append((store.move, sku, location, -quantity, 0))  # the hold's undo, as soon as it is made (R7)
        expires_at = now + cmd.ttl_ms
        rec = Reservation(rid, cmd.order_ref, cmd.channel, cmd.ttl_ms, cmd.allow_partial, _HELD,
                          (LineRecord(sku, location, quantity, quantity, _GRANTED, a, quantity),), now,
                          expires_at, now, ttl_default=cmd.ttl_default)
        self.reservations[rid] = rec
        self.live_reservations += 1
        heappush(self._expiry, (expires_at, rid))  # R3: it expires when its TTL has passed
        if quantity:  # units outstanding there (``HoldsIndex.update``)
            self._holds_at.add(sku, location, rid)
        undo.append((self._unsave_new, rec, True))  # undone first (newest first): the record, then the hold
        self._events.extend((HoldMoved(sku, location, quantity, 0), ReservationSaved(rec)))
        return rec

    def _refuse_new(self, cmd: ReserveCommand, sku: str, location: str, quantity: int, a: int,
                    now: int) -> Reservation:
        """``reserve_new`` where ``quantity`` does not fit ``a``, the position's ``available``, and
        nothing was held: INSUFFICIENT (R2), remembered for its retention (R5)."""
        rid = cmd.reservation_id
        rec = Reservation(rid, cmd.order_ref, cmd.channel, cmd.ttl_ms, cmd.allow_partial, _REJECTED,
                          (LineRecord(sku, location, quantity, 0, _INSUFFICIENT, a),), now, 0, now,
                          ttl_default=cmd.ttl_default)
        self.reservations[rid] = rec
        self._resolved.append((now, rid))
        self._undo.append((self._unsave_new, rec, False))
        self._events.append(ReservationSaved(rec))
        return rec

    def _unsave_new(self, rec: Reservation, live: bool) -> None:
        """Undo of a new record's save: the id is unknown again. Its expiry entry stays (``due`` skips
        an id with no record), as does its retention entry (``evict`` skips it)."""
        self.live_reservations -= live
        self._holds_at.update(rec, None)
        del self.reservations[rec.reservation_id]
