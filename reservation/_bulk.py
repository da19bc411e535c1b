"""ERP counts in columns (``LoadCounts``): a baseline of millions of positions without an object per row.

A block's rows are the COUNT facts RecordEvents would take for them, in the block's order, and each
gets the outcome it would get there. Most rows of a baseline, a nightly resync or a stock extract are
decided for the whole block in numpy (``_plan``): the position's latest count sent again (E8: a
duplicate, or a conflict if its payload differs), and the only row of its position in the block that
E8 does not know — a position the shard has never seen (the count makes it, E2), one whose latest
count is older and which keeps no deltas (the count replaces it and sets on_hand, E2; the count it
supersedes stays known to E8), both as one ``CountsLoaded`` event, or one whose latest count is newer
(E5: absorbed, each as its ``FactApplied``) — unless stamped before stream time minus grace as the
rows before it left it (E6: quarantined late, each as its ``FactQuarantined``). Every other row — a
position named twice in the block, a newer count where deltas are kept (on_hand may pass
±max_on_hand), a count stamped like the latest one (E1 orders them by source), a position without a
count, an identity E8's memory holds — is recorded by ``Ledger.record_fact``, in the block's order.

Rows at different positions meet only through stream time and E8's memory. Stream time before each
row is a running maximum (``_room.stream_times``): a row decided in numpy raises it by its stamp where
it would apply were it not late (late, it is below stream time anyway), and each row recorded one by
one is told the stream time the rows in numpy before it left (``record_fact``'s ``stream_time``). So
the rows recorded one by one go first, each seeing the stream time it would see in the block's order,
and the rows in numpy are then decided against what those moved. E8's memory decides only once full:
the split is taken where it stays below ``max_dedupe_entries_per_shard`` with every count superseded or
absorbed in it and an entry for each row recorded one by one; otherwise every row goes one by one, in
order (one by one, a row is quarantined once the memory is full, so which rows fill it first decides).

The rows recorded one by one cost ~60 µs each in the shard's turn: their number is what a block holds
of positions named twice and of newer counts at positions keeping deltas within the grace window (the
day's sales after the last count) — not its late rows — or every row where E8's memory is near its
bound (a capacity state that is alerted on). They are not split over several turns: a shard's part is
applied whole or refused whole (``max_positions_per_shard``, docs/API.md ``LoadCounts``), which a part
split over turns, between which other calls make positions, could not keep; ``max_rows_per_load``
bounds them.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt

from ._dedupe import Digest
from ._errors import Reason, ResourceExhausted
from ._events import CountsLoaded, FactApplied, FactQuarantined
from ._keys import _SEP
from ._limits import CAPACITY_QUARANTINE, DEDUPE_LIMIT, POSITIONS_LIMIT
from ._model import Fact, FactKind, FactOutcome
from ._names import Names
from ._room import BlockCells, BoolArray, known_before, positions_made, stream_times
from ._store import MADE, Int32Array, Int64Array, IntpArray
from ._undo import Undo, run_undo

if TYPE_CHECKING:
    from ._ledger import Ledger

_COUNT = FactKind.COUNT
_APPLIED, _DUPLICATE = np.uint8(FactOutcome.APPLIED), np.uint8(FactOutcome.DUPLICATE)
_QUARANTINED = np.uint8(FactOutcome.QUARANTINED)
CONFLICT = "conflict: event_id already applied with a different payload"
"""E8's quarantine reason of a fact whose identity was applied with another payload."""
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

    def facts(self, rows: npt.NDArray[np.intp]) -> list[Fact]:
        """``fact`` of each row of ``rows``."""
        skus, locations, source = self.skus, self.locations, self.source
        return [Fact(count_event_id(t), source, _COUNT, skus[s], locations[loc], q, t, "") for s, loc, q, t in zip(
            self.sku_index[rows].tolist(), self.location_index[rows].tolist(), self.quantity[rows].tolist(),
            self.at[rows].tolist(), strict=True)]

    def digests(self, rows: npt.NDArray[np.intp]) -> list[Digest]:
        """E8's identity of each row of ``rows`` (``_dedupe.digest``; each name encoded once, not per row)."""
        times, when = np.unique(self.at[rows], return_inverse=True)
        skus, sku_of = np.unique(self.sku_index[rows], return_inverse=True)
        locations, location_of = np.unique(self.location_index[rows], return_inverse=True)
        heads = [f"{self.source}{_SEP}{count_event_id(t)}{_SEP}".encode() for t in times.tolist()]
        sku_names = [f"{self.skus[s]}{_SEP}".encode() for s in skus.tolist()]
        location_names = [self.locations[loc].encode() for loc in locations.tolist()]
        blake2b = hashlib.blake2b
        return [blake2b(heads[t] + sku_names[s] + location_names[loc], digest_size=16).digest()
                for t, s, loc in zip(when.tolist(), sku_of.tolist(), location_of.tolist(), strict=True)]


def load_counts(ledger: Ledger, block: CountRows) -> tuple[Outcomes, dict[int, str]]:
    """Each row's outcome (a ``FactOutcome`` value) and the reasons of those quarantined."""
    if len(set(block.skus)) < len(block.skus) or len(set(block.locations)) < len(block.locations):
        # count_rows refuses it at the edge: two indices of one name would be two rows of one position
        raise ValueError("load_counts: a SKU or location named twice in the block's dictionaries")
    cells = block_cells(ledger, block)
    held, counted = len(ledger.store), new_positions(ledger, block, cells)
    refusal = room_refusal(ledger, counted)
    if refusal is not None:  # before any change: the shard's part is applied whole or not at all
        raise refusal
    outcomes = np.zeros(len(block), dtype=np.uint8)
    reasons: dict[int, str] = {}
    plan = _plan(ledger, block, cells) if len(block) else None
    if plan is None:  # E8's memory may fill: which rows fill it first decides, so every row in the block's order
        plan = _Plan(*(np.zeros(len(block), dtype=np.bool_) for _ in range(4)))
    _load_in_order(ledger, block, plan, outcomes, reasons)
    if len(ledger.store) - held > counted:  # a bug: the bound was checked for fewer (the shard takes it back)
        raise AssertionError(f"load_counts: {len(ledger.store) - held} positions made, {counted} counted")
    return outcomes, reasons


def new_positions(ledger: Ledger, block: CountRows, cells: BlockCells | None = None) -> int:
    """How many positions the block's rows would make: exactly those they make recorded one by one
    in its order (``_room``). A row that E8 knows, that is late (E6) or that finds E8's memory full
    (``no_room_reason``) makes none — also where the rows before it in the block moved stream time
    or filled the memory: counted, it would refuse a block whose rows one by one fit the bound.
    ``cells``: ``block_cells`` of the block, where the caller has them."""
    if not len(block):
        return 0
    return positions_made(ledger, block, block_cells(ledger, block) if cells is None else cells)


def block_cells(ledger: Ledger, block: CountRows) -> BlockCells:
    """The block's rows as the shard holds their positions now (``_room.BlockCells``)."""
    store, si, li = ledger.store, block.sku_index, block.location_index
    rows, cols = store.rows(block.skus)[si], store.columns(block.locations)[li]
    known = (rows >= 0) & (cols >= 0)
    present = np.zeros(len(block), dtype=np.bool_)
    ident, head, count_time, count_qty = (np.zeros(len(block), dtype=np.int64) for _ in range(4))
    if known.any():
        present[known], count_time[known], count_qty[known], ident[known], head[known] = \
            store.counts_at(rows[known], cols[known])

    def resent() -> BoolArray:  # names looked up for the rows at a counted position only
        counted = np.flatnonzero(ident)
        out = np.zeros(len(block), dtype=np.bool_)
        out[counted] = ident[counted] == _identities(ledger, block, counted)
        return out

    return BlockCells(si.astype(np.int64) * len(block.locations) + li, present, ident != 0, head, count_time,
                      count_qty, functools.cache(resent))


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


class _Plan(NamedTuple):
    """What numpy decides of a block's rows (``_plan``); the others are recorded one by one."""

    moves: BoolArray
    """The only row of its position, applied unless late (E6: in the block's order, stream time as the rows
    before it left it): a new position, or a newer count at one keeping no deltas (both in one
    ``CountsLoaded``), or an older count (``older``)."""
    older: BoolArray
    """Of ``moves``: older than its position's latest count (E5: absorbed, on_hand unmoved, E8 remembers
    it), each as its ``FactApplied``."""
    duplicate: BoolArray
    """Its position's latest count sent again (E8, whatever the rows before it)."""
    conflict: BoolArray
    """Its position's latest count's identity with another payload (E8: quarantined, whatever the rows before it)."""


def _plan(ledger: Ledger, block: CountRows, cells: BlockCells) -> _Plan | None:
    """The rows numpy decides (None: E8's memory could fill in the block, so none: see the module)."""
    _, inverse, counts = np.unique(cells.position, return_inverse=True, return_counts=True)
    alone = counts[inverse] == 1  # the only row of its position: nothing in the block changes its position
    # E8 knows a resend of a latest count whatever the block does before it: superseded by an earlier
    # row, it is remembered with the same payload (``remember_superseded``).
    resent = cells.resent()
    duplicate = resent & (cells.count_time == block.at) & (cells.count_qty == block.quantity)
    # E1: (at, count, ...) after (count_time, count, ...) when at > count_time; with no kept delta
    # on_hand = the count (a count's quantity is within max_quantity <= max_on_hand: never taken back).
    newer = alone & cells.counted & ~resent & (cells.count_time < block.at) & (cells.head == 0)
    older = alone & cells.counted & ~resent & (cells.count_time > block.at)  # E5, kept deltas or not
    held = known_before(ledger, block, cells, newer | older)  # E8: an identity its memory holds is not new
    newer &= ~held
    older &= ~held
    moves = (alone & ~cells.present) | newer | older
    one_by_one = len(block) - int(np.count_nonzero(moves | resent))
    # Each superseded or absorbed count is an E8 entry, and so may be each row recorded one by one: where
    # they could reach the bound, a row would skip a quarantine RecordEvents gives it once the rows before
    # it in the block's order filled the memory.
    entries = int(np.count_nonzero(newer | older)) + one_by_one
    if len(ledger.memory) + entries >= ledger.limits.max_dedupe_entries_per_shard:
        return None
    return _Plan(moves, older, duplicate, resent & ~duplicate)


def _load_in_order(ledger: Ledger, block: CountRows, plan: _Plan, outcomes: Outcomes, reasons: dict[int, str]) -> None:
    """The block's rows as recorded one by one in its order (``_plan``'s rows in numpy, see the module)."""
    start, at = ledger.stream_time, block.at
    floor = stream_times(start, np.where(plan.moves, at, start))  # as plan.moves's rows leave it, late or not
    moved = np.full(len(block), start, dtype=np.int64)
    rows = np.flatnonzero(~(plan.moves | plan.duplicate | plan.conflict))
    for i, fact, stream_time in zip(rows.tolist(), block.facts(rows), floor[rows].tolist(), strict=True):
        outcome, reason = ledger.record_fact(fact, stream_time)
        outcomes[i] = outcome
        if reason:
            reasons[i] = reason
        elif outcome != FactOutcome.DUPLICATE:  # applied or absorbed: stream time is its stamp from the next row on
            moved[i] = fact.event_time
    horizon = np.maximum(np.maximum(floor, stream_times(start, moved)) - ledger.limits.fact_grace_ms,
                         ledger.forgotten_before)  # ``late_horizon``
    late = plan.moves & (at < horizon)
    outcomes[plan.duplicate] = _DUPLICATE
    rows = np.flatnonzero(plan.conflict | late)
    for i, fact, conflict, before in zip(rows.tolist(), block.facts(rows), plan.conflict[rows].tolist(),
                                         horizon[rows].tolist(), strict=True):
        reasons[i] = CONFLICT if conflict else late_reason(fact.event_time, before)
        ledger.emit(FactQuarantined(fact, reasons[i]))
    outcomes[rows] = _QUARANTINED
    rows = np.flatnonzero(plan.older & ~late)  # absorbed (E5): each moves stream time, E8 remembers it
    outcomes[rows] = [ledger.emit(FactApplied(fact)) for fact in block.facts(rows)]
    whole = plan.moves & ~plan.older & ~late
    if whole.any():
        ledger.emit(_event(ledger, block, whole))
        outcomes[whole] = _APPLIED


def late_reason(event_time: int, horizon: int) -> str:
    """E6's quarantine reason of a fact stamped before ``horizon`` (stream time minus grace)."""
    return f"late: event_time {event_time} is before stream time minus grace ({horizon})"


def _identities(ledger: Ledger, block: CountRows, rows: IntpArray) -> Int64Array:
    """Per row of ``rows``, its (source, event_id) as the store's columns would hold it (-1: names
    unknown here, so no position's latest count can be this row's fact)."""
    names = ledger.store.names
    source = names.find(block.source)
    if not source:
        return np.full(len(rows), -1, dtype=np.int64)
    times, inverse = np.unique(block.at[rows], return_inverse=True)
    events = np.array([names.find(count_event_id(t)) for t in times.tolist()], dtype=np.int64)[inverse]
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
