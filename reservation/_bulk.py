"""ERP counts in columns (``LoadCounts``): a baseline of millions of positions without an object per row.

A block's rows are the COUNT facts RecordEvents would take for them, and each gets the outcome it
would get there. Most rows of a baseline or a nightly resync are one of three cases, decided for the
whole block in numpy: a position the shard has never seen (the count makes it, E2), a position
whose latest count is older and which keeps no deltas (the count replaces it and sets on_hand, E2;
the count it supersedes stays known to E8), both as one ``CountsLoaded`` event, or the position's
latest count sent again (E8: a duplicate, recognised from its columns). Every other row — an older
count, a position with kept deltas, a position named twice in the block, a conflicting resend, an
identity E8 already holds — is recorded one by one by ``Ledger.record_fact``, exactly.

Lateness (E6) depends on the order facts arrive in, so the split is taken only where order cannot
matter: when no row of the block is older than the newest time it holds (or the shard's stream
time) minus the grace window, and where E8's memory stays below ``max_dedupe_entries_per_shard``
with every superseded count in it and an entry for each row recorded one by one (one by one, a row
is quarantined once the memory is full, so which rows fill it first decides).
Otherwise every row goes one by one, in the block's order.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ._dedupe import Digest, digest
from ._errors import Reason, ResourceExhausted
from ._events import CountsLoaded
from ._limits import CAPACITY_QUARANTINE, DEDUPE_LIMIT, POSITIONS_LIMIT
from ._model import Fact, FactKind, FactOutcome
from ._names import Names
from ._room import BlockCells, positions_made
from ._store import MADE, Int32Array, Int64Array, IntpArray
from ._undo import Undo, run_undo

if TYPE_CHECKING:
    from ._ledger import Ledger

_COUNT = FactKind.COUNT
_APPLIED, _DUPLICATE = np.uint8(FactOutcome.APPLIED), np.uint8(FactOutcome.DUPLICATE)
U32 = npt.NDArray[np.uint32]
Outcomes = npt.NDArray[np.uint8]


def count_event_id(at: int) -> str:
    """A loaded count's event_id: its as-of time, so a re-load is the same fact (E8)."""
    return f"count@{at}"


class CountRows:
    """One shard's rows of a block, checked at the edge: ids valid, quantities within limits."""

    __slots__ = ("at", "location_index", "locations", "quantity", "sku_index", "skus", "source")

    def __init__(self, source: str, skus: Sequence[str], locations: Sequence[str], sku_index: U32,
                 location_index: U32, quantity: Int64Array, at: Int64Array) -> None:
        self.source, self.skus, self.locations = source, skus, locations
        self.sku_index, self.location_index, self.quantity, self.at = sku_index, location_index, quantity, at

    def __len__(self) -> int:
        return len(self.at)

    def fact(self, i: int) -> Fact:
        at = int(self.at[i])
        return Fact(count_event_id(at), self.source, _COUNT, self.skus[self.sku_index[i]],
                    self.locations[self.location_index[i]], int(self.quantity[i]), at, "")


def load_counts(ledger: Ledger, block: CountRows) -> tuple[Outcomes, dict[int, str]]:
    """Each row's outcome (a ``FactOutcome`` value) and the reasons of those quarantined."""
    if len(set(block.skus)) < len(block.skus) or len(set(block.locations)) < len(block.locations):
        # count_rows refuses it at the edge: two indices of one name would be two rows of one position
        raise ValueError("load_counts: a SKU or location named twice in the block's dictionaries")
    held, counted = len(ledger.store), new_positions(ledger, block)
    refusal = room_refusal(ledger, counted)
    if refusal is not None:  # before any change: the shard's part is applied whole or not at all
        raise refusal
    outcomes = np.zeros(len(block), dtype=np.uint8)
    reasons: dict[int, str] = {}
    if not len(block):
        return outcomes, reasons
    newest = max(ledger.stream_time, int(block.at.max()))
    if int(block.at.min()) >= newest - ledger.limits.fact_grace_ms:
        new, duplicate = _split(ledger, block)
        outcomes[duplicate] = _DUPLICATE
        if new.any():
            ledger.emit(_event(ledger, block, new))
            outcomes[new] = _APPLIED
        one_by_one = np.flatnonzero(~(new | duplicate)).tolist()
    else:
        one_by_one = list(range(len(block)))
    for i in one_by_one:
        outcome, reason = ledger.record_fact(block.fact(i))
        outcomes[i] = outcome
        if reason:
            reasons[i] = reason
    if len(ledger.store) - held > counted:  # a bug: the bound was checked for fewer (the shard takes it back)
        raise AssertionError(f"load_counts: {len(ledger.store) - held} positions made, {counted} counted")
    return outcomes, reasons


def new_positions(ledger: Ledger, block: CountRows) -> int:
    """How many positions the block's rows would make: exactly those they make recorded one by one
    in its order (``_room``). A row that E8 knows, that is late (E6) or that finds E8's memory full
    (``no_room_reason``) makes none — also where the rows before it in the block moved stream time
    or filled the memory: counted, it would refuse a block whose rows one by one fit the bound."""
    store = ledger.store
    if not len(block) or len(ledger.memory) >= ledger.limits.max_dedupe_entries_per_shard:
        return 0  # every row E8 does not know is quarantined, and the memory only grows in a block
    si, li = block.sku_index, block.location_index
    rows, cols = store.rows(block.skus)[si], store.columns(block.locations)[li]
    known = (rows >= 0) & (cols >= 0)
    present = np.zeros(len(block), dtype=np.bool_)
    ident = np.zeros(len(block), dtype=np.int64)
    head = np.zeros(len(block), dtype=np.int64)
    if known.any():
        present[known], _, _, ident[known], head[known] = store.counts_at(rows[known], cols[known])
    return positions_made(ledger, block, BlockCells(
        si.astype(np.int64) * len(block.locations) + li, present, ident != 0, head,
        lambda: (ident != 0) & (ident == _identities(ledger, block))))


def room_refusal(ledger: Ledger, new: int) -> ResourceExhausted | None:
    """CAPACITY_REACHED when ``new`` more positions would pass ``max_positions_per_shard`` (None: they fit)."""
    held, limit = len(ledger.store), ledger.limits.max_positions_per_shard
    if not new or held + new <= limit:
        return None
    return ResourceExhausted(f"shard {ledger.shard}: {held} positions, {new} more would pass the limit {limit} "
                             f"({POSITIONS_LIMIT}); nothing applied", Reason.CAPACITY_REACHED,
                             metadata={"limit": POSITIONS_LIMIT})


def no_room_reason(ledger: Ledger, sku: str, location: str, new: bool) -> str:
    """The quarantine reason of a new fact (E8 does not know it) the shard has no room for ("": room):
    E8's memory at ``max_dedupe_entries_per_shard`` (nothing in the grace window is forgotten early:
    a resend would apply twice), or a ``new`` position at ``max_positions_per_shard``. Every fact
    ingested passes here: the positions are counted (a sum over every SKU) only for a new one."""
    remembered, limits = len(ledger.memory), ledger.limits
    if remembered >= limits.max_dedupe_entries_per_shard:
        return (f"{CAPACITY_QUARANTINE}: shard {ledger.shard} remembers {remembered} fact identities for dedupe "
                f"(limit {DEDUPE_LIMIT} = {limits.max_dedupe_entries_per_shard})")
    if not new or len(ledger.store) < limits.max_positions_per_shard:
        return ""
    return (f"{CAPACITY_QUARANTINE}: {sku!r} at {location!r} is a new position and shard {ledger.shard} holds "
            f"{len(ledger.store)} (limit {POSITIONS_LIMIT} = {limits.max_positions_per_shard})")


def _split(ledger: Ledger, block: CountRows) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(rows applied in one step: a new position, or a newer count at a position keeping no deltas;
    rows that resend a position's latest count)."""
    store, si, li = ledger.store, block.sku_index, block.location_index
    per_block = si.astype(np.int64) * len(block.locations) + li
    _, inverse, counts = np.unique(per_block, return_inverse=True, return_counts=True)
    alone = counts[inverse] == 1  # a position named twice in one block goes one by one, in order
    rows, cols = store.rows(block.skus)[si], store.columns(block.locations)[li]
    known = (rows >= 0) & (cols >= 0)
    exists = np.zeros(len(block), dtype=np.bool_)
    duplicate = np.zeros(len(block), dtype=np.bool_)
    newer = np.zeros(len(block), dtype=np.bool_)
    if known.any():
        r, c = rows[known], cols[known]
        present, count_time, count_qty, ident, head = store.counts_at(r, c)
        exists[known] = present
        at = block.at[known]
        wanted = _identities(ledger, block)[known]
        duplicate[known] = present & (ident == wanted) & (count_time == at) & (count_qty == block.quantity[known])
        # E1: (at, count, ...) after (count_time, count, ...) when at > count_time; no kept delta can
        # be after it (E9 keeps every delta a count that is not late could precede), so on_hand = it.
        # E8: not an identity applied here already — as the latest count (odd ids) or remembered.
        newer[known] = present & (ident != 0) & (ident != wanted) & (count_time < at) & (head == 0)
    newer &= alone
    candidates = np.flatnonzero(newer)
    if len(candidates):
        newer[candidates[ledger.memory.holds(_digests(block, candidates))]] = False
    whole, duplicate = (alone & ~exists) | newer, alone & duplicate
    # Each superseded count is an E8 entry, and so may be each row recorded one by one after the
    # event (an older count, a position named twice): where they could reach the bound, a row applied
    # whole would skip a quarantine RecordEvents gives it, in the block's order, once the rows before
    # it filled the memory. Then every row goes one by one, each decided as RecordEvents would.
    one_by_one = len(block) - int(np.count_nonzero(whole | duplicate))
    if len(ledger.memory) + int(np.count_nonzero(newer)) + one_by_one >= ledger.limits.max_dedupe_entries_per_shard:
        nothing = np.zeros(len(block), dtype=np.bool_)
        return nothing, nothing
    return whole, duplicate


def _digests(block: CountRows, rows: npt.NDArray[np.intp]) -> list[Digest]:
    """E8's identity of each row of ``rows``."""
    skus, locations, source = block.skus, block.locations, block.source
    return [digest(source, count_event_id(t), skus[s], locations[loc]) for t, s, loc in zip(
        block.at[rows].tolist(), block.sku_index[rows].tolist(), block.location_index[rows].tolist(), strict=True)]


def _identities(ledger: Ledger, block: CountRows) -> Int64Array:
    """Per row, its (source, event_id) as the store's columns would hold it (-1: names unknown here,
    so no position's latest count can be this row's fact)."""
    names = ledger.store.names
    source = names.find(block.source)
    times, inverse = np.unique(block.at, return_inverse=True)
    events = np.array([names.find(count_event_id(t)) for t in times.tolist()], dtype=np.int64)[inverse]
    if not source:
        return np.full(len(block), -1, dtype=np.int64)
    return np.where(events > 0, source << 32 | events, -1)


def _event(ledger: Ledger, block: CountRows, rows: npt.NDArray[np.bool_]) -> CountsLoaded:
    """The rows ``rows`` picks as one event, with only the SKUs and locations they name."""
    skus, si = np.unique(block.sku_index[rows], return_inverse=True)
    locs, li = np.unique(block.location_index[rows], return_inverse=True)
    locations = [block.locations[j] for j in locs.tolist()]
    defaults = ledger.safety_defaults
    safety = np.array([defaults.get(loc, 0) for loc in locations], dtype="<i8")
    return CountsLoaded(
        block.source, [block.skus[j] for j in skus.tolist()], locations, si.astype("<u4").tobytes(),
        li.astype("<u4").tobytes(), block.quantity[rows].astype("<i8").tobytes(),
        block.at[rows].astype("<i8").tobytes(), safety.tobytes())


def loaded_facts(event: CountsLoaded) -> list[Fact]:
    """The facts an event holds, one per row (for readers of the log: audits, checks)."""
    si = np.frombuffer(event.sku_index, dtype="<u4").tolist()
    li = np.frombuffer(event.location_index, dtype="<u4").tolist()
    quantity = np.frombuffer(event.quantity, dtype="<i8").tolist()
    at = np.frombuffer(event.at, dtype="<i8").tolist()
    return [Fact(count_event_id(t), event.source, _COUNT, event.skus[s], event.locations[loc], q, t, "")
            for s, loc, q, t in zip(si, li, quantity, at, strict=True)]


def apply_counts(ledger: Ledger, event: CountsLoaded) -> Undo:
    """Make the event's new positions and recount the others (live and in replay alike, E10: the
    same rows find the same positions); returns how to take it all back."""
    store = ledger.store
    si = np.frombuffer(event.sku_index, dtype="<u4")
    li = np.frombuffer(event.location_index, dtype="<u4")
    quantity = np.frombuffer(event.quantity, dtype="<i8").astype(np.int64)
    at = np.frombuffer(event.at, dtype="<i8").astype(np.int64)
    safety = np.frombuffer(event.safety, dtype="<i8").astype(np.int64)[li]
    sku_rows, loc_cols = store.cells(event.skus, event.locations)
    rows, cols = sku_rows[si], loc_cols[li]
    present, _, _, ident, _ = store.counts_at(rows, cols)
    moves = quantity - safety  # a new position: available is its count less its safety stock
    undos: list[Undo] = []
    fresh = ~present
    if fresh.any():
        store.create_counted(rows[fresh], cols[fresh], quantity[fresh], at[fresh],
                             _acquired(store.names, event.source, at[fresh]), safety[fresh])
        undos.append(functools.partial(store.forget_cells, rows[fresh], cols[fresh]))
        if store.journal is not None:  # the positions made, as ``PositionStore._made`` notes one (C4)
            skus, locations = _row_names(event, si[fresh], li[fresh])
            store.journal.extend((sku, loc, MADE) for sku, loc in zip(skus, locations, strict=True))
    if present.any():
        undo_recount, before = _recount(ledger, event.source, _row_names(event, si[present], li[present]),
                                        rows[present], cols[present], quantity[present], at[present], ident[present])
        moves[present] = quantity[present] - before  # on_hand moves to the count, nothing else
        undos.append(undo_recount)
    moved = _journal(store.journal, event, si, li, moves)
    old_stream_time = ledger.stream_time
    ledger.stream_time = max(old_stream_time, int(at.max()))

    def undo() -> None:
        for step in reversed(undos):
            run_undo(step)
        if store.journal is not None and moved is not None:
            store.journal.extend((sku, loc, -d) for sku, loc, d in moved)
        ledger.stream_time = old_stream_time

    return undo


def _acquired(names: Names, source: str, at: Int64Array) -> tuple[int, Int32Array]:
    """The names of counts of ``source`` at ``at``, acquired once per row: (source, event_ids)."""
    times, inverse, users = np.unique(at, return_inverse=True, return_counts=True)
    event_ids = np.array([names.acquire(count_event_id(t), n) for t, n in zip(times.tolist(), users.tolist(),
                                                                               strict=True)], dtype=np.int32)
    return names.acquire(source, len(at)), event_ids[inverse]


def _recount(ledger: Ledger, source: str, names_of: tuple[list[str], list[str]], r: IntpArray, c: IntpArray,
             qty: Int64Array, when: Int64Array, ident: Int64Array) -> tuple[Undo, Int64Array]:
    """Newer counts at positions that exist (and keep no deltas; ``ident``: their counts' (source,
    event_id) as ``counts_at`` gives it): each superseded count is remembered by E8 from now on, as
    ``fold_count`` does. Returns the undo and on_hand before."""
    store, memory, names = ledger.store, ledger.memory, ledger.store.names
    old_source, old_event = (ident >> 32).astype(np.int32), (ident & 0xFFFFFFFF).astype(np.int32)
    uses = np.bincount(np.concatenate([old_source, old_event]))
    held = {i: (names.name(i), int(uses[i])) for i in np.flatnonzero(uses).tolist()}  # before any is released
    new_source, event_ids = _acquired(names, source, when)
    before, old_time, old_qty = store.recount(r, c, qty, qty, when,
                                              (np.full(len(r), new_source, dtype=np.int32), event_ids))
    keys = [memory.remember_superseded(sku, loc, (t, held[s][0], held[e][0], q)) for sku, loc, t, s, e, q in zip(
        *names_of, old_time.tolist(), old_source.tolist(), old_event.tolist(), old_qty.tolist(), strict=True)]

    def undo() -> None:
        for key in keys:
            memory.drop(key)
        lookup = np.zeros(len(uses), dtype=np.int32)
        for i, (name, n) in held.items():  # acquired again before the newer counts' names are released
            lookup[i] = names.acquire(name, n)
        store.recount(r, c, before, old_qty, old_time, (lookup[old_source], lookup[old_event]))

    return undo, before


def _row_names(event: CountsLoaded, si: U32, li: U32) -> tuple[list[str], list[str]]:
    """The SKU and the location of each row of ``si``/``li``."""
    return (np.array(event.skus, dtype=object)[si].tolist(), np.array(event.locations, dtype=object)[li].tolist())


def _journal(journal: list[tuple[str, str, int]] | None, event: CountsLoaded, si: U32, li: U32,
             available: IntpArray | Int64Array) -> list[tuple[str, str, int]] | None:
    """The rows' moves of ``available`` into the store's journal (C4), while it keeps one."""
    if journal is None:
        return None
    moved = list(zip(*_row_names(event, si, li), available.tolist(), strict=True))
    journal.extend(moved)
    return moved
