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
— every new position named is made, and they are counted in numpy: a baseline or a resync. Otherwise the
rows are walked in order up to the last naming a new position (where the memory cannot fill, a row of
a position that exists is looked at only if later than stream time). ``load_counts`` then records
them one by one anyway: ~60 µs a row, the walk ~1 µs (50,000 rows, one late: 30 ms against 2.8 s).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt

from ._dedupe import digest
from ._facts import COUNT_RANK, OrderKey, count_key
from ._store import Int64Array

if TYPE_CHECKING:
    from ._bulk import CountRows
    from ._ledger import Ledger

BoolArray = npt.NDArray[np.bool_]
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
    resent: Callable[[], BoolArray]
    """Whether each row's identity is its position's latest count (E8 knows it from the columns)."""


def positions_made(ledger: Ledger, block: CountRows, cells: BlockCells) -> int:
    """The positions the block's rows make recorded one by one in its order (no bound on positions);
    E8's memory is below its bound before the block (else none: see ``new_positions``)."""
    missing = ~cells.present
    if not missing.any():
        return 0
    newest = max(ledger.stream_time, int(block.at.max()))
    never_late = int(block.at[missing].min()) >= newest - ledger.limits.fact_grace_ms
    short = _memory_stays_short(ledger, cells)
    if never_late and short:
        # Each new position's first row applies: E8 cannot know it (a position E8 knows a fact of
        # exists), it is not late in any order, and the memory is never full before it.
        return len(np.unique(cells.position[missing]))
    stop = int(np.flatnonzero(missing)[-1]) + 1
    made = _walk_stream_time(ledger, block, cells, stop) if short else None
    return _walk(ledger, block, cells, stop) if made is None else made


def _memory_stays_short(ledger: Ledger, cells: BlockCells) -> bool:
    """Whether E8's memory stays below its bound whatever rows of the block apply: each adds one
    entry at most, and none the first row at a position without a count, nor a resend of a latest
    count (E8 knows it)."""
    room = ledger.limits.max_dedupe_entries_per_shard - len(ledger.memory)
    if len(cells.position) < room:
        return True
    could_add = len(cells.position) - len(np.unique(cells.position[~cells.counted]))
    return could_add < room or could_add - int(np.count_nonzero(cells.resent())) < room


def _walk_stream_time(ledger: Ledger, block: CountRows, cells: BlockCells, stop: int) -> int | None:
    """``_walk`` where E8's memory cannot fill: only stream time decides. A row at a new position that
    is not late makes it (E8 knows it only once a row made it); one at a position that exists moves
    stream time if later and unknown to E8, unless taken back past ±max_on_hand: None then (``_walk``
    decides). A count later than stream time can be: a Fulfil's shipment (R4) is a kept delta stamped
    by the service's clock, past stream time, and those after the count add to it (E2)."""
    grace, stream_time = ledger.limits.fact_grace_ms, ledger.stream_time
    made: set[int] = set()
    bound, pool = ledger.limits.max_on_hand, ledger.histories.pool
    for i, p, t, new, head, q in zip(range(stop), cells.position[:stop].tolist(), block.at[:stop].tolist(),
                                     (~cells.present[:stop]).tolist(), cells.head[:stop].tolist(),
                                     block.quantity[:stop].tolist(), strict=True):
        if t < stream_time - grace:
            continue  # E6: late
        if new:
            made.add(p)
        elif t <= stream_time or _known(ledger, block, i):
            continue
        elif head and not -bound <= q + pool.sum_after(head, t) <= bound:  # on_hand after it (E2)
            return None  # it may be taken back (whether on_hand moves outwards decides): walked exactly
        stream_time = max(stream_time, t)
    return len(made)


def _walk(ledger: Ledger, block: CountRows, cells: BlockCells, stop: int) -> int:
    """The rows before ``stop`` in order, each decided as ``record_fact`` decides it."""
    limits = ledger.limits
    grace, room = limits.fact_grace_ms, limits.max_dedupe_entries_per_shard - len(ledger.memory)
    stream_time = ledger.stream_time
    counted = set(cells.position[cells.counted].tolist())
    applied: set[tuple[int, int]] = set()  # (position, at): E8 knows these from the row that applied on
    made: set[int] = set()
    folded: dict[int, Folded] = {}  # positions with kept deltas, as the rows walked so far left them
    for i, p, t, new, kept in zip(range(stop), cells.position[:stop].tolist(), block.at[:stop].tolist(),
                                  (~cells.present[:stop]).tolist(), (cells.head[:stop] != 0).tolist(), strict=True):
        if (p, t) in applied or t < stream_time - grace or (not new and _known(ledger, block, i)):
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


def _known(ledger: Ledger, block: CountRows, i: int) -> bool:
    """Whether E8 knew row ``i``'s identity before the block (as ``record_fact`` asks it)."""
    fact = block.fact(i)
    key = digest(fact.source, fact.event_id, fact.sku, fact.location)
    return ledger.memory.payload(key, fact.source, fact.event_id, fact.sku, fact.location) is not None


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
