"""The expiry heap's stale entries (R3): bounded by the live reservations, not by their TTLs.

``Ledger._expiry`` gets an entry (expires_at, id) whenever a hold is saved with a new expiry; a hold
confirmed, released or given another TTL leaves its entry behind, and ``Ledger.due`` skips it once
its time comes — up to ``max_ttl_seconds`` (7 days) later: past the retention window, and outside
``max_live_reservations_per_shard``, so a caller reserving and releasing grew the heap for a week.
Between batches the stale entries are dropped once they outnumber the live reservations by
``EXPIRY_SLACK``: the heap holds at most 2 x live + ``EXPIRY_SLACK`` entries between passes, each
entry looked at a bounded number of times (amortised O(1) a hold).

A sweep looks at ``EXPIRY_SWEEP_SLICE`` entries between two turns of the event loop (``sweeping``):
at 100,000 live holds a sweep of ~200,000 entries took ~0.14 s in one go, at the 2,000,000 live
reservations a shard allows seconds, in which no shard, call or lease renewal ran.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._model import Reservation, State

if TYPE_CHECKING:
    from ._ledger import Ledger

EXPIRY_SLACK = 1024
"""Expiry entries allowed beyond twice the live reservations before the stale ones are dropped."""
EXPIRY_SWEEP_SLICE = 50_000
"""Expiry entries one slice of a sweep looks at (~35 ms), a turn of the event loop between slices."""
EXPIRY_STALE_PER_TURN = 16_384
"""Stale expiry entries (their hold confirmed, released or given another TTL since) one turn drops from
the queue's head at most (``Ledger.due``, ``Ledger.due_alone``: ~40 ms at ~2.5 µs a pop); the rest go at
the next turns, a hold due behind them expired then (R3). Confirmed holds count as live, so the sweep
leaves their entries: after a clock jump or a long pause (the process stopped, its VM suspended) all of
them came due together, and one turn popped them all — a million took ~2.5 s, every shard, call and
lease renewal waiting. Dropped when the hold is resolved instead, each Confirm or Release would look
for its entry in the heap: ~0.1 s at a million entries."""


EXPIRY_ASIDE_PER_SLICE = 16_384
"""Entries of the queue a sweep has set aside that the checks made between two of its slices walk past together
at most (``SetAside``, ~40 ms); past it they find no due hold there until the sweep's next slice (R8)."""

_NEVER = 2**63
"""After every expiry time (a passed-over hold's first, where there is none)."""


@dataclass(slots=True)
class SetAside:
    """The expiry queue a sweep has set aside (``sweeping``) as the checks made between its slices read it: the
    shard's turns wait behind the sweep, and the turn after it finds none of the stale entries the sweep drops."""

    queue: list[tuple[int, str]]
    """A heap in its first ``size`` entries, the holds a turn passed over after them; only read."""
    size: int
    passed_due: int
    """When the first hold passed over falls due (``_NEVER``: none)."""
    frontier: list[tuple[tuple[int, str], int]]
    """The heap's nodes not walked past yet whose parents were, earliest first: a stale entry or a hold the check
    passes over is walked past once a sweep, not once a check (each check looked again at the same ones, and
    counted them, and a batch's next checks found no hold)."""
    budget: int
    """Entries the checks may still walk past before the sweep's next slice (``EXPIRY_ASIDE_PER_SLICE``)."""
    passed: int = 0
    """Holds ``alone`` refuses that the checks have walked past this sweep. Not counted in the batch's walk: the
    sweep queues them again and the turn after it walks past them itself, from the queue's head (counted by both, it
    stopped short of a due hold a check had found)."""


def expiry_stale(entries: int, live: int) -> bool:
    """Whether a heap of ``entries`` holds enough stale ones (``live`` reservations) to sweep."""
    return entries > 2 * live + EXPIRY_SLACK


def take_due(ledger: Ledger, now: int, limit: int, alone: Callable[[Reservation], bool] | None, stale: int
             ) -> tuple[list[str], int]:
    """The due holds from the head of ``ledger``'s expiry queue, stale entries dropped, at most ``limit``
    (``Ledger.due``, ``Ledger.due_alone``); with ``alone``, those it refuses are passed over and left queued
    (housekeeping's: set aside in ``Ledger._passed``, which ``due`` walks with the queue, earliest first). Stops
    at a stale or passed-over entry once ``stale`` are dropped or passed over (left queued: the next turn's);
    also returns how many were. Pushed back onto the queue's head, the holds passed over were walked again by
    every turn and every check before one while housekeeping could not expire them (a part's Redis away): up
    to the bound, ~70 ms, each batch, and counted again at each walk, a check's hold out of its turn's reach.
    Stopped at the first refused, a Reserve's turn left every hold due after a due order or hold spanning
    shards to the next pass: its units refused the Reserve, a refusal its id replays for good (R5), while a
    Confirm of it answered EXPIRED (R2, R3)."""
    ledger._unquiet()
    expiry, records, out = ledger._expiry, ledger.reservations, dict[str, None]()  # a twin (``held_again``): once
    dropped = 0
    passed = ledger._passed  # due holds ``alone`` refused: set aside, still queued, walked once (R8)
    while len(out) < limit:
        # housekeeping's (no ``alone``): the holds set aside too, in their order among the rest
        queue = passed if alone is None and passed and (not expiry or passed[0] < expiry[0]) else expiry
        if not queue or queue[0][0] > now:
            break
        expires_at, rid = queue[0]
        rec = records.get(rid)
        held = rid not in out and rec is not None and rec.state == State.HELD and rec.expires_at == expires_at
        if held and rec is not None and (alone is None or alone(rec)):
            out[rid] = None
            # Rolled back, the hold must still expire later: one entry, not one per twin popped (R3).
            ledger._undo.append(functools.partial(ledger.requeue_expiry, expires_at, rid))
        elif dropped >= stale:  # a bounded walk a turn (R8), passed-over holds counted with stale entries
            break
        else:
            dropped += 1
            if held:  # ``alone`` refused it: the queue is ``expiry``
                heapq.heappush(passed, (expires_at, rid))
        heapq.heappop(queue)
    return list(out), dropped


def due_head(ledger: Ledger, now: int, stale: int, alone: Callable[[Reservation], bool]
             ) -> tuple[Reservation | None, int]:
    """The first due hold of ``ledger``'s expiry queue that ``alone`` accepts — what ``take_due`` would take
    first —, the stale entries before it dropped and the holds ``alone`` refuses passed over (left queued) on
    the way, at most ``stale`` of them together (None past them, as ``take_due`` stops there); None where none
    is due. Also returns how many were dropped or passed over (of the live queue: the turn walks past those of
    the queue a sweep set aside again, ``_due_set_aside``). Nothing else changes: a stale entry names no
    hold due then, wherever it is dropped. Looking at the head alone, a hold the turn expires behind an order
    due first was not found, and a new id its turn grants refused (``IdGuard._room_in_turn``). While a sweep is
    part-way, the queue it set aside is looked in too, as the turn after the sweep will find it (``_due_set_aside``)."""
    ledger._unquiet()
    expiry, records = ledger._expiry, ledger.reservations
    dropped = 0
    passed = ledger._passed
    found: Reservation | None = None
    stop: tuple[int, str] | None = None  # where the walk stopped: a hold found, or the bound
    while expiry and expiry[0][0] <= now:
        expires_at, rid = expiry[0]
        rec = records.get(rid)
        held = rec is not None and rec.state == State.HELD and rec.expires_at == expires_at
        if rec is not None and held and alone(rec):
            found, stop = rec, expiry[0]
            break
        if dropped >= stale:
            stop = expiry[0]
            break
        dropped += 1
        if held:
            heapq.heappush(passed, heapq.heappop(expiry))
        else:
            heapq.heappop(expiry)
    # A sweep part-way: the rest of the queue is there. Looked at with the bound reached too: the turn takes a
    # hold ``alone`` accepts at the head whatever it has walked (``take_due``), the stale entries there dropped.
    if ledger._set_aside is not None and dropped <= stale:
        found = _due_set_aside(ledger, now, stale - dropped, alone, stop) or found
    return found, dropped


def _due_set_aside(ledger: Ledger, now: int, stale: int, alone: Callable[[Reservation], bool],
                   before: tuple[int, str] | None) -> Reservation | None:
    """``due_head`` in the queue a sweep has set aside (``SetAside``), ordered before ``before`` (None: any), in
    the heap's order. A stale entry is walked past uncounted: the sweep drops it before the Reserve's turn runs,
    and counted, a hold due behind the bound's worth of them was refused here that the turn then expired
    (``IdGuard._room_in_turn``). The holds ``alone`` refuses before it, walked past by this check or an earlier one
    of the sweep, are ``stale`` at most, as in the turn, which walks past each of them again. The holds passed over
    after the heap are not looked at: ``alone`` refuses them. None once the checks have walked
    ``EXPIRY_ASIDE_PER_SLICE`` entries since the sweep's last slice (R8)."""
    aside = ledger._set_aside
    assert aside is not None
    frontier, records = aside.frontier, ledger.reservations
    while frontier and aside.budget > 0:
        entry, at = frontier[0]
        expires_at, rid = entry
        if expires_at > now or (before is not None and entry >= before):
            break
        rec = records.get(rid)
        held = rec is not None and rec.state == State.HELD and rec.expires_at == expires_at
        if rec is not None and held and alone(rec):
            return rec
        if held:
            if aside.passed >= stale:
                break
            aside.passed += 1
        aside.budget -= 1
        heapq.heappop(frontier)
        for child in (2 * at + 1, 2 * at + 2):
            if child < aside.size:
                heapq.heappush(frontier, (aside.queue[child], child))
    return None


def due_at_head(ledger: Ledger, now: int) -> bool:
    """Whether the expiry queue's head is due (it may be stale), the part a sweep has set aside counted too: asked
    between its slices, the queue read empty, and a housekeeping pass skipped the shard's expiry (R3)."""
    expiry, aside = ledger._expiry, ledger._set_aside
    if expiry and expiry[0][0] <= now:
        return True
    return aside is not None and ((aside.size > 0 and aside.queue[0][0] <= now) or aside.passed_due <= now)


def held_again(expiry: list[tuple[int, str]], old: Reservation, undone: Reservation) -> None:
    """Requeue ``old``'s expiry when taking back ``undone`` (its Confirm, Release or expiry, whose append
    failed: R7) makes it a hold again. A turn in flight after it may have popped the hold's entry
    meanwhile, seeing it resolved (``Ledger.due`` skips those): without this the hold never expired
    (R3), its units reserved, offered to no one, until a restart. The entry may have a twin: ``due``
    takes a hold once."""
    if old.state == State.HELD and (undone.state != State.HELD or undone.expires_at != old.expires_at):
        heapq.heappush(expiry, (old.expires_at, old.reservation_id))


def held_only(expiry: list[tuple[int, str]], records: Mapping[str, Reservation]) -> list[tuple[int, str]]:
    """The entries of ``expiry`` still naming a hold due then, as a heap."""
    kept = [(at, rid) for at, rid in expiry
            if (rec := records.get(rid)) is not None and rec.state == State.HELD and rec.expires_at == at]
    heapq.heapify(kept)
    return kept


def sweeping(ledger: Ledger, slice_size: int = EXPIRY_SWEEP_SLICE) -> Generator[None, None, int]:
    """Drop ``ledger``'s stale expiry entries ``slice_size`` at a time, yielding between slices;
    returns how many. The heap is set aside meanwhile: an entry requeued between slices (a spanning
    expiry that failed) goes to a fresh one, merged at the end. Stopped part-way (the driver closes
    it), what it had not looked at is kept whole: a hold whose entry was dropped would never expire."""
    old, ledger._expiry = ledger._expiry, []
    # Between slices the checks made outside the shard's turn look here too (``due_head``, ``due_at_head``): the
    # heap's part of ``old`` stays a heap, only read; the passed-over holds after it are due from their first.
    aside = ledger._set_aside = SetAside(old, len(old), ledger._passed[0][0] if ledger._passed else _NEVER,
                                         [(old[0], 0)] if old else [], EXPIRY_ASIDE_PER_SLICE)
    old += ledger._passed  # the holds a turn passed over, set aside: queued again here
    ledger._passed = []
    kept: list[tuple[int, str]] = []
    looked = 0
    try:
        for looked in range(0, len(old), slice_size):
            if looked:
                aside.budget = EXPIRY_ASIDE_PER_SLICE  # the checks' walk until the next slice
                yield
            kept += held_only(old[looked:looked + slice_size], ledger.reservations)
        looked = len(old)
    finally:
        kept += old[looked:]
        kept += ledger._expiry
        heapq.heapify(kept)
        ledger._expiry, ledger._set_aside = kept, None
    return len(old) - len(kept)
