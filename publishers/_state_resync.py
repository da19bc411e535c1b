"""Delivery from the channel's state hash (the last published value of every key, which trimming
cannot remove): the keys whose newest values were trimmed from the stream unread, or owed after
more dead letters than ``redeliver_max_keys``, get their values from it, ``read_count`` at a time.

The stock-outs of the whole hash go first, in a sweep of their own, then the other values (C2: a
drop to 0 is published at once). Page by page in the hash's order, with only each page's
stock-outs first, a 0 on a late page waited behind every earlier page's values and their tokens:
a resync of 100,000 keys at 10 updates/s held it for hours. ``Sweep`` keeps where a resync is, so
that its caller can go a step (one HSCAN call) at a time and read the channel stream between steps:
a stock-out published meanwhile does not wait for the whole resync either.

Its HSCAN calls go on a connection of their own (``HashScan``): a cursor holds within one Redis
server's life, and one kept across a restart or a failover passed over about a tenth of the keys —
the resync ended without them, its mark deleted, and nothing owed them again until each changed (C4).
A sweep whose server changed since it began (the connection made again) goes again from the start.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from atp_service.storage.channel_wire import state_update
from atp_service.storage.hash_scan import HashScan
from atp_service.storage.resp import as_text
from reservation import ChannelUpdate

from ._config import PublisherConfig
from ._metrics import PublisherMetrics

log = logging.getLogger(__name__)
Deliver = Callable[[list[ChannelUpdate]], Awaitable[bool]]
"""Deliver and record updates (the publisher's way); False: a stop cut it off."""


@dataclass(slots=True)
class Sweep:
    """A resync under way, a step at a time: the versions it wants, where its HSCAN of the state hash
    is (and the server life its cursor is of, ``HashScan``), and which of its two sweeps it is in (the
    stock-outs, then the other values)."""

    wanted: Callable[[int], bool]
    cursor: int = 0
    stock_outs: bool = True
    done: bool = False
    life: int = 0


MAX_RANGES = 1024
"""Ranges of versions a catch-up of entries trimmed unread remembers apart, at most (``Owed``)."""


class Owed:
    """The versions a catch-up of entries trimmed unread wants (gaps; pending entries a takeover found
    trimmed), kept flat as sorted ranges. Each gap found while another was caught up wrapped what was
    wanted so far in one more predicate: a publisher behind the stream's trimming for hours, a gap at
    each read, nested them past Python's recursion limit, and the ``RecursionError`` of the next key
    looked at ended it. Past ``MAX_RANGES`` ranges those with the narrowest holes between them are
    joined: memory stays bounded, and a version in a hole was read from the stream, so its key's value
    is delivered already (skipped by version), or taken over, or owed as a dead letter is."""

    def __init__(self) -> None:
        self._ranges: list[tuple[int, int]] = []
        self._firsts: list[int] = []

    def add(self, ranges: Iterable[tuple[int, int]]) -> None:
        """``ranges`` (first, last version, both wanted) joined to those wanted, overlapping or adjacent ones merged."""
        merged: list[tuple[int, int]] = []
        for first, last in sorted([*self._ranges, *ranges]):
            if merged and first <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], last))
            else:
                merged.append((first, last))
        if len(merged) > MAX_RANGES:  # hole n lies between ranges n and n + 1: the narrowest ones joined
            holes = sorted(range(len(merged) - 1), key=lambda n: merged[n + 1][0] - merged[n][1])
            joined, kept = set(holes[:len(merged) - MAX_RANGES]), list[tuple[int, int]]()
            for n, (first, last) in enumerate(merged):
                if n - 1 in joined:
                    kept[-1] = (kept[-1][0], last)
                else:
                    kept.append((first, last))
            merged = kept
        self._ranges, self._firsts = merged, [first for first, _ in merged]

    def __call__(self, version: int) -> bool:
        i = bisect_right(self._firsts, version) - 1
        return i >= 0 and version <= self._ranges[i][1]


def sweep_owing(gap: Sweep | None, ranges: Iterable[tuple[int, int]]) -> Sweep:
    """A sweep wanting what ``gap`` (a catch-up under way, or None) wanted and ``ranges`` too, from the
    start of the hash again (the keys of the versions added may lie before its cursor)."""
    owed = gap.wanted if gap is not None and isinstance(gap.wanted, Owed) else Owed()
    owed.add(ranges)
    return Sweep(owed)


class StateResync:
    def __init__(self, config: PublisherConfig, client: Any, metrics: PublisherMetrics, adapter: str,
                 delivered_version: Callable[[str], int], deliver: Deliver) -> None:
        self.config, self.client, self.metrics, self.adapter = config, client, metrics, adapter
        self._delivered_version, self._deliver = delivered_version, deliver
        self._scan = HashScan(client)

    async def __call__(self, wanted: Callable[[int], bool], why: str,
                       keep_going: Callable[[], bool] = lambda: True) -> bool:
        """Deliver each key's value whose version is ``wanted`` and not delivered yet, the stock-outs
        first, to the end. False: stopped half-way, or ``keep_going()`` False after a page."""
        log.warning("%s: %s; delivering their keys' newest values from the channel's state hash",
                    self.config.channel, why)
        sweep = Sweep(wanted)
        while not sweep.done:
            if await self.step(sweep, keep_going) is None:
                return False
        return True

    async def aclose(self) -> None:
        """The connection its HSCAN calls are held on given back to the pool: a sweep under way goes again
        from the start after it (a new connection, a new life)."""
        await self._scan.aclose()

    async def step(self, sweep: Sweep, keep_going: Callable[[], bool] = lambda: True) -> int | None:
        """One HSCAN call of ``sweep`` (about ``read_count`` keys): its stock-outs, or its other values,
        wanted and not delivered yet, delivered; ``sweep`` moved on. How many were sent; None: stopped,
        or ``keep_going()`` False after a page (the same step again next time). A key that drops to 0
        after the stock-outs' sweep has a new version, which the stream holds for the group to read (or
        a later catch-up finds trimmed): the second sweep leaves it, and a 0 the first dead-lettered is
        not sent twice. A step whose reply came from another server life than its sweep's first (a
        restart, a failover since) goes again from the start (C4), over the pages with nothing left to send
        in one go, to the first with something (or the end): the connection made again at every step (the
        server's ``timeout`` closing it while the caller works between steps) still gets further each time,
        where a step at a time it was sent back before it passed its first page, for ever. A life that
        changed again in that go sends nothing: the next step goes again."""
        cfg = self.config
        again = False
        while True:
            after, found, life = await self._scan.hscan(cfg.state_key, sweep.cursor, cfg.read_count)
            if sweep.cursor == 0:
                sweep.life = life
            elif life != sweep.life:
                self._again(sweep)
                if again:
                    return 0
                again = True
                continue
            page = [u for key, value in found.items() if (u := state_update(cfg.channel, key, value)).version
                    > self._delivered_version(as_text(key)) and (u.quantity == 0) == sweep.stock_outs
                    and sweep.wanted(u.version)]
            if not (again and not page and int(after)):
                break
            sweep.cursor = int(after)  # gone over since it began: nothing new here, on at once
        for start in range(0, len(page), cfg.read_count):
            if not await self._page(page[start:start + cfg.read_count]) or not keep_going():
                return None
        sweep.cursor = int(after)
        if not sweep.cursor:
            sweep.done, sweep.stock_outs = not sweep.stock_outs, False
        return len(page)

    def _again(self, sweep: Sweep) -> None:
        """``sweep`` from the start of its phase again: its cursor, kept across a restart of Redis or a failover
        (the connection made again), would pass over keys of the table built again there (C4). The keys it
        delivered already are skipped by version."""
        cfg = self.config
        log.warning("%s: Redis restarted or failed over while the channel's state hash was swept (an HSCAN cursor "
                    "holds within one server's life); sweeping it again from its start", cfg.channel,
                    extra={"event": "publisher_resync_again", "channel": cfg.channel})
        sweep.cursor = 0

    async def _page(self, page: list[ChannelUpdate]) -> bool:
        """Counted as taken from the state hash, before it is sent: a resync stopped half-way (or while
        the destination answered) still counts the pages it took."""
        self.metrics.outcome(self.config.channel, self.adapter, "resynced", len(page))
        return await self._deliver(page)
