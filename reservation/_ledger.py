"""One shard's state, changed only through events so that live equals replay (E10).

Every change is an event: ``_apply`` mutates state and returns how to undo it. Live commands emit events
into the open batch and keep the undo steps; if the batch cannot be made durable the steps run backwards
and state is as it was (R7: memory never moves ahead of the log). Replay calls the same ``_apply``.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Generator, Iterator

from ._bulk import CONFLICT, CountRows, Outcomes, apply_counts, late_reason, load_counts, no_room_reason
from ._dedupe import Digest, FactMemory, digest
from ._events import (
    CountsLoaded,
    Event,
    FactApplied,
    FactQuarantined,
    HoldMoved,
    LogEntry,
    ReservationSaved,
    SafetyStockSet,
    Shipped,
    saved_since,
)
from ._expiry import EXPIRY_STALE_PER_TURN, due_at_head, due_head, expiry_stale, held_again, sweeping, take_due
from ._facts import COUNT_RANK, DELTA_RANK, Histories, PositionHistory
from ._holds import HoldsIndex
from ._keys import fact_key, fact_payload, pair_key, split_key
from ._limits import Limits
from ._model import OUTGOING_KINDS, TERMINAL, Fact, FactKind, FactOutcome, Quantities, Reservation, State
from ._position_events import apply_safety_stock, apply_shipped
from ._reserve_writes import ReserveWrites
from ._restore import restoring, run_through
from ._snapshot import LedgerSnapshot, snapshot_of
from ._store import ON_HAND, PositionStore
from ._undo import Undo, run_undo
from ._upkeep import Upkeep

_LIVE = (State.HELD, State.CONFIRMED)
_COUNT = int(FactKind.COUNT)
__all__ = ["Ledger", "LedgerSnapshot", "fact_key", "pair_key", "split_key"]


class Ledger(ReserveWrites, Upkeep):
    """State of one shard: positions, fact histories, reservations, fact dedupe."""

    def __init__(self, shard: int, limits: Limits) -> None:
        self.shard = shard
        self.limits = limits
        self.store = PositionStore()
        self.histories = Histories(self.store)
        self.memory = FactMemory(self.store)  # E8
        self.reservations: dict[str, Reservation] = {}
        self.stream_time = 0  # E6: largest event_time accepted; never goes back
        self.clock = 0  # R6: newest service timestamp this shard has logged
        self.live_reservations = 0
        self._expiry: list[tuple[int, str]] = []
        self._passed: list[tuple[int, str]] = []
        """Due holds a turn (or the check before one) passed over, set aside from ``_expiry`` (a heap), still queued:
        housekeeping's ``due`` puts them back first. On the queue's head, every turn walked them again (R8)."""
        self._resolved: deque[tuple[int, str]] = deque()
        # A map that grows with the estate is keyed by one str (``pair_key``), not a tuple: a fresh
        # tuple is tracked by the cyclic GC and inserting it makes the dict tracked again, so every
        # full collection walked every position of the shard (a stall of every call in flight).
        self._holds_at = HoldsIndex()
        self._events: list[Event] = []
        self._undo: list[Undo] = []
        self.safety_defaults: dict[str, int] = {}
        """Q4 for a position's first fact, by location (the estate's defaults per location type):
        logged as a SafetyStockSet when the position is created, so replay equals live (E10)."""

    # -- reads --------------------------------------------------------------
    def quantities(self, sku: str, location: str) -> Quantities:
        return self.store.get(sku, location)

    def available(self, sku: str, location: str) -> int:
        """Q5 of a position (0 where there is none), without building its ``Quantities``."""
        return self.store.available(sku, location, 0)

    def reservation(self, reservation_id: str) -> Reservation | None:
        return self.reservations.get(reservation_id)

    # -- changes (the View used by operations) -------------------------------
    def ship(self, sku: str, location: str, quantity: int, at: int, ref: str) -> None:
        self.emit(Shipped(sku, location, quantity, at, ref))

    def save(self, reservation: Reservation) -> None:
        """``emit(ReservationSaved(reservation))`` without its dispatch (every Reserve's)."""
        self._undo.append(self._apply_reservation(reservation))
        self._events.append(ReservationSaved(reservation))

    def set_safety_stock(self, sku: str, location: str, quantity: int) -> None:
        self.emit(SafetyStockSet(sku, location, quantity))

    def record_fact(self, fact: Fact, stream_time: int = 0) -> tuple[FactOutcome, str]:
        """Dedupe (E8), lateness (E6: against ``stream_time`` where later, LoadCounts' rows before it), then fold
        (E1-E5). Returns outcome and reason."""
        key = digest(fact.source, fact.event_id, fact.sku, fact.location)
        seen = self.memory.payload(key, fact.source, fact.event_id, fact.sku, fact.location)
        if seen is not None:
            if seen == fact_payload(fact):
                return FactOutcome.DUPLICATE, ""
            self.emit(FactQuarantined(fact, CONFLICT))
            return FactOutcome.QUARANTINED, CONFLICT
        horizon = self.late_horizon(max(self.stream_time, stream_time))  # E6, never before what E8 forgot
        if fact.event_time < horizon:
            reason = late_reason(fact.event_time, horizon)
            self.emit(FactQuarantined(fact, reason))
            return FactOutcome.QUARANTINED, reason
        new = not self.store.exists(fact.sku, fact.location)
        reason = no_room_reason(self, fact.sku, fact.location, new)  # logged: replay never decides it (E10)
        if reason:
            self.emit(FactQuarantined(fact, reason))
            return FactOutcome.QUARANTINED, reason
        if new:
            default = self.safety_defaults.get(fact.location, 0) if self.safety_defaults else 0
            if default:
                self.emit(SafetyStockSet(fact.sku, fact.location, default))
        # The hot path of ingestion: _emit's dispatch inlined.
        undo, outcome, delta, on_hand = self._apply_fact(fact, key)
        if delta and self._past_on_hand_bound(on_hand, delta):
            run_undo(undo)
            reason = f"out of range: on_hand would pass ±{self.limits.max_on_hand} (limit max_on_hand)"
            self.emit(FactQuarantined(fact, reason))
            return FactOutcome.QUARANTINED, reason
        self._events.append(FactApplied(fact))
        self._undo.append(undo)
        return outcome, ""

    def load_counts(self, block: CountRows) -> tuple[Outcomes, dict[int, str]]:
        """COUNT facts in columns, each with the outcome ``record_fact`` gives it (``_bulk``)."""
        return load_counts(self, block)

    # -- batches -------------------------------------------------------------
    @property
    def pending(self) -> bool:
        return bool(self._events)

    @property
    def open_events(self) -> list[Event]:
        """Events of the open batch, in order (what the next log entry will hold)."""
        return self._events

    def commit(self, ts: int) -> LogEntry:
        """Close the open batch: its events become a log entry and can no longer be undone."""
        entry = LogEntry(ts, self._events)
        self.clock = max(self.clock, ts)
        self._events, self._undo = [], []
        self.store.journal = []
        return entry

    def seal(self, ts: int) -> tuple[LogEntry, list[Undo], list[tuple[str, str, int]]]:
        """Close the open batch but keep its undo steps: its append is in flight (pipelining). Also
        returns its moves of ``available`` per position: readers of durable state subtract them until then (C4)."""
        entry, undo, moved = LogEntry(ts, self._events), self._undo, self.store.journal or []
        if ts > self.clock:  # ``max``, without its call: every batch's
            self.clock = ts
        self._events, self._undo = [], []
        self.store.journal = []
        return entry, undo, moved

    def revert(self, undo: list[Undo]) -> None:
        """Take back a sealed batch. Sealed batches must be reverted newest first, between batches."""
        self._unquiet()
        for step in reversed(undo):
            run_undo(step)
        self.store.journal = []  # the steps' own moves cancel a batch that is gone: not the next one's

    def rollback(self) -> None:
        """Undo the open batch (its append failed): state and journal as before it (no ``MADE`` of it left, C4)."""
        self.rollback_to((0, 0))
        self.store.journal = None if self.store.journal is None else []

    def mark(self) -> tuple[int, int]:
        """Where the open batch stands now (``rollback_to`` takes it back here)."""
        return len(self._events), len(self._undo)

    def rollback_to(self, mark: tuple[int, int]) -> None:
        """Undo what the open batch gained since ``mark``: one command that failed half-way."""
        events, undo = mark
        self._unquiet()
        while len(self._undo) > undo:
            run_undo(self._undo.pop())
        del self._events[events:]

    def replay(self, entry: LogEntry) -> None:
        """Apply a durable entry (recovery, or one found in the log when settling; between batches)."""
        self._unquiet()
        journal, self.store.journal = self.store.journal, None
        for event in entry.events:
            self._apply(event)
        self.store.journal = journal
        self.clock = max(self.clock, entry.ts)

    # -- time ----------------------------------------------------------------
    def due(self, now: int, limit: int = 2**62) -> list[str]:
        """Held reservations whose TTL has passed (R3), in expiry order; at most ``limit`` of them, and at
        most ``EXPIRY_STALE_PER_TURN`` stale entries dropped on the way (those after them: the next call)."""
        return take_due(self, now, limit, None, EXPIRY_STALE_PER_TURN)[0]

    def expiry_due(self, now: int) -> bool:
        """Whether the expiry queue's head is due (it may be stale: ``due_alone`` drops it)."""
        return bool(self._expiry) and self._expiry[0][0] <= now

    def due_first(self, now: int, alone: Callable[[Reservation], bool] = lambda _: True) -> Reservation | None:
        """The hold due first (R3) that ``alone`` accepts where one is, for a check made before a Reserve's turn
        (``IdGuard``): the stale entries before it dropped, the holds ``alone`` refuses passed over. They count
        against the next batch's ``EXPIRY_STALE_PER_TURN`` (``due_alone``'s): past it None, as that turn stops
        there. Counted apart, a stream's batch of 1,000 new ids checked one after another walked up to 1,000
        times the bound in one go (R8)."""
        batch, taken, dropped = self._alone_taken
        if batch is not self._events:
            taken = dropped = 0
        rec, more = due_head(self, now, EXPIRY_STALE_PER_TURN - dropped, alone)
        self._alone_taken = (self._events, taken, dropped + more)
        return rec

    def due_alone(self, now: int, alone: Callable[[Reservation], bool], limit: int) -> list[str]:
        """``due`` from the queue's head, those ``alone`` accepts (this ledger expires it by itself; the others are
        passed over, left queued for housekeeping), for a Reserve's turn to expire first (R2, R3): at most ``limit``
        an open batch, and at most ``EXPIRY_STALE_PER_TURN`` stale entries dropped or holds passed over an open
        batch (R8)."""
        batch, taken, dropped = self._alone_taken
        if batch is not self._events:
            taken = dropped = 0
        out, more = take_due(self, now, limit - taken, alone, EXPIRY_STALE_PER_TURN - dropped)
        self._alone_taken = (self._events, taken + len(out), dropped + more)
        return out

    def requeue_expiry(self, expires_at: int, reservation_id: str) -> None:
        self._unquiet()
        heapq.heappush(self._expiry, (expires_at, reservation_id))

    def housekeeping_due(self, now: int) -> bool:
        """A hold to expire, or a resolved reservation past retention to forget (each queue's head looked at)."""
        passed = self._passed  # set aside: due then, not by a clock behind it (R3)
        if due_at_head(self, now) or (passed and passed[0][0] <= now):
            return True
        resolved = self._resolved
        return bool(resolved) and resolved[0][0] < now - self.limits.retention_ms

    def evict(self, now: int, limit: int = 2**62, unsure_from: int | None = None) -> list[str]:
        """Forget resolved reservations past retention (bounded R5 memory), ``limit`` at most (the rest next call).
        Not an order whose resolution is pending (R3: its parts may hold units only its saga gives back; saved
        settled, it is queued again), nor one an entry in flight (``unsure_from`` on) or the open batch saved (R7)."""
        cutoff = min(now - self.limits.retention_ms, saved_since(self._events, now, unsure_from))
        gone: list[str] = []
        for _ in range(min(limit, len(self._resolved))):
            if self._resolved[0][0] >= cutoff:
                break
            at, rid = self._resolved.popleft()
            rec = self.reservations.get(rid)
            if rec is not None and rec.state in TERMINAL and rec.updated_at == at and rec.pending is None:
                del self.reservations[rid]
                gone.append(rid)
        return gone

    # -- snapshots -------------------------------------------------------------
    def snapshot(self) -> LedgerSnapshot:
        return snapshot_of(self)

    @classmethod
    def restore(cls, shard: int, limits: Limits, snap: LedgerSnapshot) -> Ledger:
        """The state of ``snap``, in one go (a recovery goes a slice at a time: ``_restore.restoring``)."""
        return run_through(restoring(cls(shard, limits), snap))

    # -- the one place state changes -------------------------------------------
    def emit(self, event: Event) -> FactOutcome:
        undo, outcome = self._apply(event)
        self._events.append(event)
        if undo is not None:
            self._undo.append(undo)
        return outcome

    def _apply(self, event: Event) -> tuple[Undo | None, FactOutcome]:
        if isinstance(event, HoldMoved):
            return self._apply_hold(event), FactOutcome.APPLIED
        if isinstance(event, ReservationSaved):
            return self._apply_reservation(event.reservation), FactOutcome.APPLIED
        if isinstance(event, FactApplied):
            fact = event.fact
            undo, outcome, _, _ = self._apply_fact(fact, digest(fact.source, fact.event_id, fact.sku, fact.location))
            return undo, outcome
        if isinstance(event, Shipped):
            return apply_shipped(self, event), FactOutcome.APPLIED
        if isinstance(event, CountsLoaded):
            return apply_counts(self, event), FactOutcome.APPLIED
        if isinstance(event, SafetyStockSet):
            return apply_safety_stock(self.store, event), FactOutcome.APPLIED
        return None, FactOutcome.QUARANTINED  # FactQuarantined changes no state

    def _apply_hold(self, event: HoldMoved) -> Undo:  # as ``move_hold`` (live) applies one
        sku, loc = event.sku, event.location
        store = self.store
        if not store.move(sku, loc, event.d_reserved, event.d_committed):  # it created the position
            return store.forget, sku, loc  # ``run_undo``'s tuple form: cheaper to build than a partial
        return store.move, sku, loc, -event.d_reserved, -event.d_committed

    def sweep_expiry(self) -> int:
        """``expiry_sweep`` in one go."""
        return run_through(self.expiry_sweep(2**62))

    def expiry_sweep(self, slice_size: int) -> Generator[None, None, int]:
        """Drop stale expiry entries (``_expiry.sweeping``), yielding between slices; returns how many.
        Between batches, none in flight or in doubt (a shard's maintenance turn)."""
        assert not self._events, "sweeping expiry inside an open batch"
        if not expiry_stale(len(self._expiry) + len(self._passed), self.live_reservations):
            return 0
        try:
            return (yield from sweeping(self, slice_size))
        finally:  # asked meanwhile, the heap was set aside (``sweeping``)
            self._unquiet()

    def _apply_reservation(self, rec: Reservation) -> Undo:
        rid = rec.reservation_id
        old = self.reservations.get(rid)
        self.reservations[rid] = rec
        delta_live = (rec.state in _LIVE) - (old is not None and old.state in _LIVE)
        self.live_reservations += delta_live
        if rec.state == State.HELD and (old is None or old.expires_at != rec.expires_at):
            heapq.heappush(self._expiry, (rec.expires_at, rid))
        if rec.state in TERMINAL:
            self._resolved.append((rec.updated_at, rid))
        self._holds_at.update(old, rec)

        def undo() -> None:
            self.live_reservations -= delta_live
            self._holds_at.update(rec, old)
            if old is None:
                del self.reservations[rid]
            else:
                self.reservations[rid] = old
                held_again(self._expiry, old, rec)

        return undo

    def holds_at(self, sku: str, location: str) -> Iterator[Reservation]:
        """Reservations recorded on this shard with units held or committed at the position."""
        for rid in self._holds_at.ids_at(sku, location):
            yield self.reservations[rid]

    def history(self, sku: str, location: str) -> PositionHistory | None:
        """What later facts can still change of a position's past (None: no count, no kept delta)."""
        return self.histories.view(self.store.locate(sku, location), self._horizon())

    def forget_position(self, sku: str, location: str) -> None:
        """Undo of the change that created a position and its history (E10: replay never saw it)."""
        cell = self.store.locate(sku, location)
        if cell is not None:
            self.histories.forget(cell)
        self.store.forget(sku, location)

    def _past_on_hand_bound(self, on_hand: int, delta: int) -> bool:
        """Whether the fact just folded took on_hand past ±max_on_hand, outwards (Q5 in int64, see
        Limits). A live decision only: replay applies what the log says, whatever the limits."""
        bound = self.limits.max_on_hand
        return on_hand > bound if delta > 0 else on_hand < -bound

    def _apply_fact(self, fact: Fact, key: Digest) -> tuple[Undo, FactOutcome, int, int]:
        """Fold a fact into its position; also returns its change to on_hand, and on_hand after it."""
        sku, location = fact.sku, fact.location
        row, col, slot, existed = self.store.place(sku, location)
        # E1: the order key is (event_time, rank, source, event_id); deltas rank 0, counts rank 1.
        kind, quantity = fact.kind, fact.quantity
        superseded = None
        if kind == _COUNT:
            order = (fact.event_time, COUNT_RANK, fact.source, fact.event_id)
            outcome, delta, undo_fold, old = self.histories.fold_count((row, col), slot, order, quantity)
            if old is not None:  # E8 covers the count it replaces, now kept as any other fact
                superseded = self.memory.remember_superseded(sku, location, old)
        else:
            order = (fact.event_time, DELTA_RANK, fact.source, fact.event_id)
            outcome, delta, undo_fold = self.histories.fold_delta(
                (row, col), slot, order, -quantity if kind in OUTGOING_KINDS else quantity)
        if delta:
            self.store.add_on_hand(slot, sku, location, delta)
        on_hand = self.store.on_hand_of(slot)
        old_stream_time = self.stream_time
        if fact.event_time > old_stream_time:
            self.stream_time = fact.event_time
        if undo_fold is None or kind != _COUNT:  # the latest count is remembered by its columns
            self.memory.remember(key, fact_payload(fact))  # E8; forget_old_facts bounds the memory
        return (self._unapply_fact, sku, location, delta, undo_fold, existed, old_stream_time, key,
                superseded), outcome, delta, on_hand

    def _unapply_fact(self, sku: str, location: str, delta: int, undo_fold: Undo | None, existed: bool,
                      old_stream_time: int, key: Digest, superseded: Digest | None) -> None:
        if delta:
            self.store.add(sku, location, ON_HAND, -delta)
        if undo_fold is not None:
            run_undo(undo_fold)
        if not existed:
            self.forget_position(sku, location)
        self.stream_time = old_stream_time
        self.memory.drop(key)
        if superseded is not None:
            self.memory.drop(superseded)
