"""How many positions a LoadCounts block would make, for ``max_positions_per_shard``: exactly those its
rows make recorded one by one in the block's order, as RecordEvents records them (``Ledger.record_fact``,
which ``_bulk.load_counts`` equals row for row).

Stream time and E8's memory move with the rows. A row that applies (a newer count, or an older one
absorbed, E5) sets stream time to its stamp when later, and E8 then remembers one identity more where
its position had a count already (the one it supersedes, or its own when absorbed); a position's first
count needs none (its columns remember it). So a row can be late (E6), or find the memory full
(``max_dedupe_entries_per_shard``), only because of the rows before it in the same block, and such a
row makes no position. Counted as of before the block, such rows would refuse whole a block whose rows
one by one fit the bound. Rows that change nothing: one E8 knows (a resend, or a conflicting one), one late,
one past a full memory, and a count that would take on_hand past ±``max_on_hand`` (only where kept
deltas after it add to it: a count's own quantity is within ``max_quantity``, checked at the edge; those
after stream time are a Fulfil's shipments, stamped by the service's clock).

Where neither can happen — no row naming a new position stamped before the block's newest time (or
stream time) minus grace, and E8's memory short of its bound by more than the rows that could add to it
— every new position named is made, and they are counted in numpy: a baseline or a resync. Where the
memory cannot fill but a row may be late, stream time before each row is a running maximum in numpy
(``late_in_order``): E8 is asked, at once, only about the rows that would raise it (of an extract
stamped alike, its first), and ``max_on_hand`` only where they keep deltas. Only where the memory may
fill, or a row could be taken back past ±``max_on_hand``, are the rows walked in order up to the last
naming a new position (``_walk``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt

from ._facts import COUNT_RANK, OrderKey, count_key
from ._store import Int64Array

if TYPE_CHECKING:
    from ._bulk import CountRows
    from ._ledger import Ledger

BoolArray = npt.NDArray[np.bool_]
_ROUNDS = 4
"""How many times ``late_in_order`` asks about the rows that would raise stream time before it asks
about every row that could (E8 ruling out a row that raised it can let the next one raise it)."""
Folded = tuple[OrderKey | None, int]
"""A position's latest count's E1 key and its on_hand, as the rows walked so far left them."""


class BlockCells(NamedTuple):
    """A block's rows as the shard holds their positions before it, in the block's order."""

    position: Int64Array
    """One number per (SKU, location) of the block (two rows name one position iff they are equal)."""
    present: BoolArray
    """The position exists."""
    counted: BoolArray
    """It has a count (E8 remembers that count once a newer one supersedes it)."""
    head: Int64Array
    """Its chain of kept deltas (0: none; a newer count's on_hand is its quantity plus those after it, E2)."""
    count_time: Int64Array
    """Its latest count's event time (0: none)."""
    count_qty: Int64Array
    """Its latest count's quantity."""
    resent: Callable[[], BoolArray]
    """Whether each row's identity is its position's latest count (E8 knows it from the columns; worked
    out once, on the first call)."""


def positions_made(ledger: Ledger, block: CountRows, cells: BlockCells) -> int:
    """The positions the block's rows make recorded one by one in its order (no bound on positions)."""
    missing = ~cells.present
    if not missing.any() or len(ledger.memory) >= ledger.limits.max_dedupe_entries_per_shard:
        return 0  # every row E8 does not know is quarantined, and the memory only grows in a block
    newest = max(ledger.stream_time, int(block.at.max()))
    never_late = int(block.at[missing].min()) >= ledger.late_horizon(newest)
    short = _memory_stays_short(ledger, cells)
    if never_late and short:
        # Each new position's first row applies: E8 cannot know it (a position E8 knows a fact of
        # exists), it is not late in any order, and the memory is never full before it.
        return len(np.unique(cells.position[missing]))
    late = late_in_order(ledger, block, cells) if short else None
    if late is not None:
        return len(np.unique(cells.position[missing & ~late]))
    return _walk(ledger, block, cells, int(np.flatnonzero(missing)[-1]) + 1)


def _memory_stays_short(ledger: Ledger, cells: BlockCells) -> bool:
    """Whether E8's memory stays below its bound whatever rows of the block apply: each adds one
    entry at most, and none the first row at a position without a count, nor a resend of a latest
    count (E8 knows it)."""
    room = ledger.limits.max_dedupe_entries_per_shard - len(ledger.memory)
    if len(cells.position) < room:
        return True
    could_add = len(cells.position) - len(np.unique(cells.position[~cells.counted]))
    return could_add < room or could_add - int(np.count_nonzero(cells.resent())) < room


def stream_times(start: int, moves: Int64Array) -> Int64Array:
    """Per row, stream time as the rows before it left it (E6): ``start``, raised by each earlier row's
    ``moves`` (its event time where it moves stream time if it applies; ``start`` or less where not)."""
    before = np.full(len(moves), start, dtype=np.int64)
    before[1:] = np.maximum(moves[:-1], start)
    return np.maximum.accumulate(before)


def late_in_order(ledger: Ledger, block: CountRows, cells: BlockCells) -> BoolArray | None:
    """Per row, whether it is late (E6) recorded in the block's order, where E8's memory cannot fill;
    None where a row could be taken back past ±max_on_hand (``_walk`` decides then).

    A row moves stream time only if it applies, but counting the event time of a row that would apply
    were it not late changes nothing: late, it is below stream time anyway. So a row counts unless E8
    knew it before the block (a resend, a conflict) or it is taken back past ±max_on_hand — decided by
    its position alone, never by the order. A row E8 knows only through an earlier row of the block
    (the same position and time) follows a row that applied at that time: it counts, changing nothing.
    A new position's rows always count. A row at a position that exists matters only where it would
    raise stream time as the rows before it leave it: one stamped at or before that changes nothing,
    whether it counts or not. So E8 is asked (and max_on_hand, where kept deltas add to the count: R4,
    a Fulfil's shipments are stamped by the service's clock, past stream time, E2) only about the rows
    that would raise it were every row not yet ruled out to count — in an extract stamped alike, its
    first row — and again where ruling some out lets others raise it, at most ``_ROUNDS`` times; then
    about every row later than stream time as the rows known to count leave it."""
    start, at = ledger.stream_time, block.at
    counts = ~cells.present  # rows known to count: a new position's, and those asked about that count
    left = cells.present.copy()  # rows at a position that exists not asked about yet
    for n in range(_ROUNDS + 1):
        ask = left & (at > stream_times(start, np.where(counts | left if n < _ROUNDS else counts, at, start)))
        if not ask.any():
            break  # every row left is stamped at or before stream time as the rows before it leave it
        left &= ~ask
        counting = _counting(ledger, block, cells, ask)
        if counting is None:
            return None
        counts |= counting
    return at < np.maximum(stream_times(start, np.where(counts, at, start)) - ledger.limits.fact_grace_ms,
                           ledger.forgotten_before)  # ``late_horizon``


def _counting(ledger: Ledger, block: CountRows, cells: BlockCells, ask: BoolArray) -> BoolArray | None:
    """Of the rows ``ask`` (at positions that exist), those that move stream time were they not late
    (E8 did not know them before the block); None where one could be taken back past ±max_on_hand."""
    counting = ask & ~known_before(ledger, block, cells, ask)
    bound, pool = ledger.limits.max_on_hand, ledger.histories.pool
    kept = np.flatnonzero(counting & (cells.head != 0))
    for head, t, q in zip(cells.head[kept].tolist(), block.at[kept].tolist(), block.quantity[kept].tolist(),
                          strict=True):
        if not -bound <= q + pool.sum_after(head, t) <= bound:  # on_hand after it (E2)
            return None  # it may be taken back (whether on_hand moves outwards decides): walked exactly
    return counting


def known_before(ledger: Ledger, block: CountRows, cells: BlockCells, rows: BoolArray) -> BoolArray:
    """Whether E8 knew each row of ``rows`` before the block (as ``record_fact`` asks it): its position's
    latest count (from the columns), or an identity its memory holds, all looked up at once."""
    known = rows & cells.resent()
    ask = np.flatnonzero(rows & cells.present & ~known)  # E8 knows no fact of a position that does not exist
    if len(ask) and len(ledger.memory):
        known[ask] = ledger.memory.holds(block.digests(ask))
    return known


def _walk(ledger: Ledger, block: CountRows, cells: BlockCells, stop: int) -> int:
    """The rows before ``stop`` in order, each decided as ``record_fact`` decides it."""
    limits = ledger.limits
    room = limits.max_dedupe_entries_per_shard - len(ledger.memory)
    stream_time = ledger.stream_time
    counted = set(cells.position[cells.counted].tolist())
    applied: set[tuple[int, int]] = set()  # (position, at): E8 knows these from the row that applied on
    made: set[int] = set()
    folded: dict[int, Folded] = {}  # positions with kept deltas, as the rows walked so far left them
    whole = np.arange(len(block)) < stop
    known = known_before(ledger, block, cells, whole).tolist()
    for i, p, t, new, kept in zip(range(stop), cells.position[:stop].tolist(), block.at[:stop].tolist(),
                                  (~cells.present[:stop]).tolist(), (cells.head[:stop] != 0).tolist(), strict=True):
        if (p, t) in applied or t < ledger.late_horizon(stream_time) or known[i]:
            continue  # E8: a resend or a conflict; E6: late — neither changes anything
        if kept and _out_of_range(ledger, block, i, folded, p):
            continue  # on_hand past ±max_on_hand: taken back (a count alone is within max_quantity)
        applied.add((p, t))
        stream_time = max(stream_time, t)
        if new:
            made.add(p)
        if p not in counted:
            counted.add(p)  # its first count: remembered by the position's columns
            continue
        room -= 1  # the count superseded, or this one absorbed (E5)
        if not room:
            break  # E8's memory is full: every row after this one is known to it or quarantined
    return len(made)


def _out_of_range(ledger: Ledger, block: CountRows, i: int, folded: dict[int, Folded], p: int) -> bool:
    """Whether row ``i``, at position ``p`` (not late, not known to E8), is quarantined for taking
    on_hand past ±max_on_hand (``Ledger._past_on_hand_bound``); else ``folded`` notes what it leaves."""
    store, fact = ledger.store, block.fact(i)
    cell = store.locate(fact.sku, fact.location)
    assert cell is not None, "kept deltas at a position that does not exist"
    if p not in folded:
        count = store.count_at(*cell)
        folded[p] = (None if count is None else count_key(count), store.get(fact.sku, fact.location).on_hand)
    latest, on_hand = folded[p]
    key = (fact.event_time, COUNT_RANK, fact.source, fact.event_id)
    if latest is not None and key < latest:
        return False  # E5: absorbed, on_hand does not move
    after = fact.quantity + ledger.histories.pool.sum_after(store.head_at(*cell), fact.event_time)  # E2
    bound = ledger.limits.max_on_hand
    if (after > on_hand and after > bound) or (after < on_hand and after < -bound):
        return True  # moved outwards past the bound: taken back
    folded[p] = (key, after)
    return False
