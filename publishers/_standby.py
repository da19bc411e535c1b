"""A publisher standing by names, as the holder does, the keys it delivered at versions Redis has since lost (C4).

Naming is done from memory (``_restamp``: what this process delivered; the ``delivered`` hash went back with Redis),
and only ever raises values in the ``restamp`` hash, so it needs no lease. Done only by the holder at the entries it
reads, it was lost wherever the holder was not the process that delivered: Redis restored from data older than the
lease (the lease key gone) let a standby take the lease at once, which never delivered those versions, and the old
holder, standing by from its next renewal, never read the service's next start marker. The destination kept the lost
values for good (C4), and no warning said so. Likewise the names a refusal left owed (``LostNames``) were tried again
at the holder's reads only, never by a process that had lost the lease since.

So a publisher that delivered anything in this run (its ``_delivered``; a process that never held the lease has
nothing to name and sends nothing) looks, while it stands by, once on losing the lease and then every
``standby_look_s``:

- It tries again the names a refusal left owed.
- It asks ``XINFO STREAM`` for the stream's last id and the number of entries ever added to it. Within a run of the
  service versions come without gaps, so where the id grew by as much as the count since its last look no run started
  in between and there is nothing to read: one call a look, whatever the channel writes. A start's version jumps above
  every version handed out before (C3), so it shows as the id growing more than the count (also across a restore: the
  count of the data restored is below the one seen, its last id too, and the marker's version is above both; a clock
  set back, which C3 allows for, may hide a start here as it may hand out a lost version again).
- Across such a jump it pages the stream (``XRANGE``, ``PAGE`` entries a page, at most ``PAGES`` pages a look) from
  where it last looked (on losing the lease: the newest version it read as the holder) for entries that carry
  ``follows``, and names from them what it delivered above ``follows`` and below their version (``lost_between``).
- Where the first entry it pages does not follow on from where it last looked (the stream's trimming removed entries
  before it looked, and a start's marker may have been among them) it cannot know ``follows``; it compares instead the
  versions it delivered with the channel's state hash, which the desk writes with every entry and never lowers: a key
  held there below the version delivered, or not at all, was delivered at a version Redis lost (``_compare``: the
  holder's too, and one comparison of the process, a step at each look). It covers every loss until the comparison,
  so the look goes on from the stream's end.

A standby never delivers and never records (C3). What it cannot name: what a stopped (or restarted) process delivered
(its memory went with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.resp import seq_of, stream_info
from atp_service.tasks import cancel_and_wait

from ._compare import Comparison
from ._config import PublisherConfig
from ._reading import link_of
from ._restamp import LostNames, lost_between

log = logging.getLogger(__name__)
T = TypeVar("T")
PAGE = 1000
"""Entries of one ``XRANGE`` of a look across a start."""
PAGES = 10
"""Pages read at most in one look: a standby far behind reads on at its next looks."""


class StandbyLooks:
    """The looks of one publisher process while it stands by. ``compare``: the process's comparison of its versions
    delivered per key now (``compare.delivered``) with the state hash (the holder's too)."""

    def __init__(self, config: PublisherConfig, client: Any, names: LostNames, compare: Comparison,
                 stop: asyncio.Event) -> None:
        self.config, self.client, self._names, self._comparison, self._stop = config, client, names, compare, stop
        self._delivered = compare.delivered
        self._cursor = 0
        """Entries up to this version looked at (or read as the holder, or known to follow on without a start)."""
        self._until = 0
        """Entries up to this version are to be paged (a start among them); at or below the cursor: none."""
        self._seen: tuple[int, int] | None = None
        """The stream's last id and entries added at the last look; None: none since standing by."""

    async def run(self) -> None:
        """A look now, then every ``standby_look_s`` until a stop (or cancelled: the lease taken)."""
        cfg, stop = self.config, self._stop
        while not stop.is_set():
            try:
                await self.look()
            except STORAGE_ERRORS as exc:  # the lease's own tries say Redis is away
                log.debug("%s: standby's look not done (%s); next in %g s", cfg.channel, exc, cfg.standby_look_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), cfg.standby_look_s)

    async def look(self) -> None:
        delivered = self._delivered()
        await self._names.owe({})  # names a refusal left owed, tried again
        if not delivered:
            return
        info = await stream_info(self.client, self.config.stream)
        if info is not None:
            self._note(seq_of(info["last-generated-id"]), info.get("entries-added"))
            await self._page(delivered)
        await self._comparison.step()

    def _note(self, last: int, added: int | None) -> None:
        """Entries up to ``last`` to page where a start came since the last look (the id grew by more than the count,
        or the count is not known); else, none being paged, the cursor moved on to ``last`` (back too, to a restored
        stream's end: the next start's marker follows that)."""
        seen, self._seen = self._seen, (last, -1 if added is None else int(added))
        if seen is None or added is None or last - seen[0] != int(added) - seen[1]:
            self._until = max(self._until, last)
        elif self._until <= self._cursor:
            self._cursor = last

    async def _page(self, delivered: Mapping[str, int]) -> None:
        """Entries after the cursor read, up to ``PAGES`` pages: what they say was lost named."""
        cfg = self.config
        for _ in range(PAGES):
            if self._until <= self._cursor:
                return
            entries = await self.client.xrange(cfg.stream, min=f"{self._cursor + 1}-0", count=PAGE)
            if not entries:
                self._until = 0
                return
            links, trimmed, position = [], False, self._cursor
            for entry_id, fields in entries:
                version, follows = seq_of(entry_id), link_of(fields)
                if follows is None:
                    trimmed |= version != position + 1
                else:  # a start's first entry: below the position, one that follows versions Redis lost
                    trimmed |= follows > position
                    links.append((version, follows))
                position = version
            await self._names.owe(lost_between(delivered, links))
            if trimmed:
                self._compare_from(position)
                return
            self._cursor = position

    def _compare_from(self, position: int) -> None:
        """Entries after ``position`` trimmed before this standby looked: the versions delivered compared with the
        state hash, from now (a comparison under way goes over every key again: a loss since may be behind what it
        compared)."""
        cfg = self.config
        self._comparison.start("standby", f"entries of {cfg.stream} after version {self._cursor} were trimmed before "
                               "this standby looked at them")
        self._cursor = max(position, self._seen[0] if self._seen else 0)
        self._until = 0

    async def while_waiting(self, waiting: Awaitable[T], position: int) -> T:
        """``waiting`` (for the lease) awaited, looking meanwhile: entries after ``position`` (the newest version
        read as the holder) not looked at yet."""
        self._cursor, self._until, self._seen = position, 0, None
        looks = asyncio.create_task(self.run())
        try:
            return await waiting
        finally:
            await cancel_and_wait(looks)

