"""C1 over every SKU changed since the last round, one numpy block per shard and channel.

For a shard, the changed SKUs' rows and a channel's location columns are gathered in one
operation (SKUs x locations), curated elementwise (per-location channels) or summed per row
first (network channels), and compared with what was last offered; only the keys whose
number moved are offered to the channel's feed, one Python step per changed key.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Container, Iterable, Sequence

import numpy as np
import numpy.typing as npt

from atp_service.channels.estate import Channel
from reservation import Feed, Key, PositionStore, curate, zero_through

Offer = tuple[Feed, str, str, int, int]  # feed, sku, location, value, source time
Ahead = tuple[dict[tuple[str, str], int], Container[tuple[str, str]]]
"""What batches in flight did: their moves of ``available`` per position, and the positions they made
(``ShardActor.ahead_of_log``)."""


class _Last:
    """What was last offered per store row (SKU) and channel column; -1: never offered."""

    __slots__ = ("values",)

    def __init__(self, cols: int) -> None:
        self.values = np.full((256, cols), -1, dtype=np.int64)

    def rows(self, rows: npt.NDArray[np.intp]) -> npt.NDArray[np.int64]:
        need = int(rows.max()) + 1 if len(rows) else 0
        if need > len(self.values):
            grown = np.full((max(need, 2 * len(self.values)), self.values.shape[1]), -1, dtype=np.int64)
            grown[: len(self.values)] = self.values
            self.values = grown
        return self.values[rows]


class Curator:
    def __init__(self) -> None:
        self._cols: dict[tuple[str, int], tuple[int, npt.NDArray[np.intp]]] = {}
        self._last: dict[tuple[str, int], _Last] = {}

    def reset(self) -> None:
        """After a configuration change: forget columns and what was offered (the feeds still
        know what was published, so unchanged numbers are not published again, E11)."""
        self._cols.clear()
        self._last.clear()

    def forget(self, channel: str, shard: int, store: PositionStore, sku: str) -> None:
        """A number was offered for ``sku`` on ``channel`` past the curator: the next curation offers
        whatever it finds (the feed drops what it already shows, E11)."""
        last = self._last.get((channel, shard))
        row = store.rows([sku])
        if last is not None and len(row) and 0 <= row[0] < len(last.values):
            last.values[row[0]] = -1

    def drop_stale(self, offers: Sequence[Offer], marked: Container[str], place: Callable[[str], int],
                   positions: Callable[[int], PositionStore]) -> list[Offer]:
        """``offers`` but those of a SKU ``marked`` again since it was curated — a durable change since,
        a stock-out offered at once among them: its value is older than what the feed may hold now, and
        offered after it would show units that are gone. Left to the next round, which offers whatever
        it finds (``forget``)."""
        kept: list[Offer] = []
        for offer in offers:
            if offer[1] in marked:
                shard = place(offer[1])
                self.forget(offer[0].channel, shard, positions(shard), offer[1])
            else:
                kept.append(offer)
        return kept

    def curate_shard(self, shard: int, store: PositionStore, skus: Sequence[str], times: Sequence[dict[str, int]],
                     channels: dict[str, Channel], feeds: dict[str, Feed],
                     ahead: Ahead | None = None) -> tuple[list[Offer], list[Offer]]:
        """The changed offers of these SKUs: (stock-outs, the rest). Stock-outs are found in the
        vectorised pass, so the caller can publish them before spending time on the rest. ``ahead``:
        how far memory's ``available`` is ahead of the durable log per position (batches in flight),
        taken off so that only durable state is curated (C4), and the positions those batches made,
        taken as absent — durable state has none of them, not even a 0 to offer (C4)."""
        urgent: list[Offer] = []
        rest: list[Offer] = []
        rows = store.rows(skus)
        known = rows >= 0
        if not known.all():
            rows, skus = rows[known], [s for s, k in zip(skus, known.tolist(), strict=True) if k]
            times = [t for t, k in zip(times, known.tolist(), strict=True) if k]
        if not len(rows):
            return urgent, rest
        newest = [max(t.values()) for t in times]  # once per SKU: per offer it was O(locations) each
        for name, channel in channels.items():
            cols = self._columns(channel, shard, store)
            available, present = store.available_block(rows, cols)
            if ahead:
                _take_off(available, present, ahead, skus, channel.sells_from)
            last = self._last.get((name, shard))
            if last is None:
                last = self._last[(name, shard)] = _Last(1 if not channel.per_location else len(cols))
            before = last.rows(rows)
            if channel.per_location:
                shown = curate(available, channel.rules)
                changed = present & (shown != before)
                last.values[rows] = np.where(present, shown, before)
            else:
                totals = np.where(present, np.maximum(available, 0), 0).sum(axis=1)  # Q5 clamp, then C1
                shown = curate(totals, channel.rules)[:, None]
                changed = present.any(axis=1, keepdims=True) & (shown != before)
                last.values[rows] = np.where(changed, shown, before)
            # C2: a drop to 0 from what the channel shows. A key without a note here (-1: after a start or a reload, or
            # an offer dropped as stale) is judged by the feed: taken for "never offered", its drop to 0 went out only
            # after the round's last slice, behind every ordinary change the round curated.
            stockout = changed & (shown == 0)
            feed, names = feeds[name], channel.sells_from if channel.per_location else ("",)
            for mask, out in ((stockout, urgent), (changed & ~stockout, rest)):
                for i, j in zip(*(a.tolist() for a in np.nonzero(mask)), strict=True):
                    loc = names[j]
                    offer = (feed, skus[i], loc, int(shown[i, j]), _source_time(times[i], newest[i], loc))
                    kept = out is rest or before[i, j] > 0 or bool(feed.last_sent((skus[i], loc)))  # else 0 for 0 (E11)
                    (out if kept else rest).append(offer)
        return urgent, rest

    def _columns(self, channel: Channel, shard: int, store: PositionStore) -> npt.NDArray[np.intp]:
        cached = self._cols.get((channel.name, shard))
        # By the store's layout of columns, not its count of them: a column dropped with the positions of a batch taken
        # back and another location's added at its index would show one location's number at the other's (C1).
        if cached is None or cached[0] != store.columns_version:
            cached = (store.columns_version, store.columns(channel.sells_from))
            self._cols[(channel.name, shard)] = cached
        return cached[1]


def _source_time(marks: dict[str, int], newest: int, location: str) -> int:
    """C3: the newest source time behind a key's value: of a network key (""), the newest mark of its SKU; of a
    location's, its own mark, else the row's ("": a block of counts marks the SKU whole), else the SKU's newest.
    A network key took the row's time even where a fact at one of its locations was newer. A location's own mark is
    not raised to the row's: a block only makes new positions and is marked per SKU, not per position, so the row's
    time is often a count at another location, newer than every fact behind this value (and its next value, stamped
    with its own fact, went back in time); only a late fact at a position the block made is stamped older."""
    if not location:
        return newest
    return marks.get(location) or marks.get("") or newest


def _take_off(available: npt.NDArray[np.int64], present: npt.NDArray[np.bool_], ahead: Ahead, skus: Sequence[str],
              locations: Sequence[str]) -> None:
    """``available`` and ``present`` (rows: ``skus``, columns: ``locations``) as of the durable log:
    minus the moves of the batches in flight, without the positions they made (each among the moves).
    Few positions are in flight at once: a loop over them, not the block."""
    moves, made = ahead
    row_of = {sku: i for i, sku in enumerate(skus)}
    col_of = {location: j for j, location in enumerate(locations)}
    for key, delta in moves.items():
        i, j = row_of.get(key[0]), col_of.get(key[1])
        if i is not None and j is not None:
            available[i, j] -= delta
            if key in made:
                present[i, j] = False


def zero_lines(channels: dict[str, Channel], feeds: dict[str, Feed]) -> list[tuple[Feed, int, frozenset[str]]]:
    """Per per-location channel, the ``available`` at or below which a position shows 0: what the desk's
    ``on_durable`` needs to offer a stock-out at once, without waiting for the round's curation."""
    return [(feeds[name], line, frozenset(channel.sells_from)) for name, channel in channels.items()
            if channel.per_location and (line := zero_through(channel.rules)) is not None]


def skus_per_slice(channels: Iterable[Channel], cells: int) -> int:
    """SKUs curated in one go: ``cells`` over the cells one SKU has in all ``channels`` together."""
    return max(1, cells // max(1, sum(len(channel.sells_from) for channel in channels)))


def unheld(shown: Iterable[Key], channel: Channel, store_of: Callable[[str], PositionStore],
           made_of: Callable[[PositionStore], Collection[Key]] = lambda _: ()) -> list[Key]:
    """The keys of ``shown`` (by the channel's feed) no durable position stands behind: of a per-location channel,
    its position; of a network channel, a position of its SKU at a location the channel sells from.
    Curation looks only at positions, so such a key would keep its number for good. It arises when
    Redis lost the entries that made the position (restarted from older data) after this feed had
    published it: memory, recovered from the log, lacks it; the feed's stream and hash do not (C4). And when
    a network channel no longer sells from any location of a SKU (a reload, or a restart, changed its
    ``sells_from``): C1's sum over no location is 0. A network channel's SKUs are looked up a shard's block
    at a time, as curation does (a SKU's every position one at a time held the loop of a reload).
    ``made_of(store)``: the positions of that store only batches in flight made - absent, as curation takes
    them (C4): kept for one, a key kept its number for good when the batch was undone, curation offering nothing."""
    by_store: dict[int, tuple[PositionStore, list[Key]]] = {}
    for key in shown:
        store = store_of(key[0])
        by_store.setdefault(id(store), (store, []))[1].append(key)
    keys: list[Key] = []
    if channel.per_location:
        for store, group in by_store.values():
            made = made_of(store)
            keys += [key for key in group if not store.exists(*key) or key in made]
        return keys
    sells = frozenset(channel.sells_from)
    for store, group in by_store.values():
        held = store.held_any(store.rows([sku for sku, _ in group]), store.columns(channel.sells_from))
        made = made_of(store)
        if made:  # few in flight: the SKUs of theirs held are looked at again, their positions left out
            suspects = {sku for sku, location in made if location in sells}
            for i in np.flatnonzero(held).tolist():
                sku = group[i][0]
                if sku in suspects:
                    held[i] = any(where in sells and (sku, where) not in made for where, _ in store.sku_locations(sku))
        keys += [group[i] for i in np.flatnonzero(~held).tolist()]
    return keys
