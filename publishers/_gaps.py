"""What the stream's trimming removed before a publisher delivered it (``Publisher``): a gap before its
position noted and owed durably (C4), its keys' newest values delivered from the channel's state hash a
step at a time, the stream read between steps (C2).
"""

from __future__ import annotations

import logging
from typing import Any

from atp_service.storage.resp import seq_of, stream_info

from ._compare import Comparison
from ._config import PublisherConfig
from ._reading import gap_before, link_of
from ._redeliver import Redelivery
from ._state_resync import StateResync, Sweep, sweep_owing

log = logging.getLogger("publishers._publisher")  # the publisher's own, as before its gaps had a module


class TrimmedGaps:
    """``Publisher``'s gaps: the versions it missed, owed, and caught up."""

    config: PublisherConfig
    client: Any
    _position: int
    _gap: Sweep | None
    _comparison: Comparison
    _redelivery: Redelivery
    _resync: StateResync

    async def _catch_up_trimmed(self) -> bool:
        """Before reading new entries: a gap the stream's trimming left before this group's position
        noted, and one step of the gap under way. False: a stop cut it off (the gap stays owed)."""
        info = await stream_info(self.client, self.config.stream)
        if info is not None:  # None: the stream deleted: the read that follows makes the group again
            first = info.get("first-entry")
            if first:
                await self._note_gap(seq_of(first[0]), link_of(first[1] or {}))
            else:
                await self._note_gap(seq_of(info["last-generated-id"]) + 1)
        await self._comparison.step()  # C4: a step of one under way (``_owe``), as of the gap's
        return await self._gap_step()

    async def _note_gap(self, version: int, follows: int | None = None, mark: int = 0, mine: int | None = None) -> None:
        """The versions this group missed before ``version`` (``gap_before``: trimmed unread, or lost by Redis)
        owed: their keys' newest values, if still among them, delivered from the state hash a step at a time,
        the stream read between steps (C2: all at once, they held a stock-out read meanwhile behind every one of
        them). The group reads past them meanwhile, so a resync of every key is owed durably until they are
        delivered (C4: a stop or crash half-way leaves them to the next start). A gap found while one is caught
        up: the sweep starts again with both. ``mark``: the value the read that found it raised the mark to."""
        gap = gap_before(version, follows, self._position, mine)
        if gap is not None:
            what = f"versions {gap.owed[0]} to {gap.owed[1]}"
            await self._owe([gap.owed], what, mark, gap.lost_said(self.config.stream, self.config.group, version))
            self._position = gap.position

    async def _owe(self, versions: list[tuple[int, int]], what: str, mark: int = 0, why: str = "") -> None:
        """``versions`` (first, last) trimmed before this group delivered them (a gap; pending entries a
        takeover found trimmed, ``_claim``; ``why``: or lost by Redis) joined, flat (``Owed``), to the sweep
        under way, which starts again. ``mark``: the value raised for them already."""
        log.warning("%s: %s; delivering their keys' newest values from the channel's state hash", self.config.channel,
                    why or self._trimmed(what))
        await self._redelivery.owe_every_key(mark)  # each gap: the mark may have been settled by a pass since the last
        self._gap = sweep_owing(self._gap, versions)
        self._comparison.start("holder", why or self._trimmed(what))  # a start's marker among them names nothing

    async def _gap_step(self) -> bool:
        """One step of the gap under way, if any; once it is over, its mark forgotten. False: stopped."""
        gap = self._gap
        if gap is None:
            return True
        if await self._resync.step(gap) is None:
            return False
        if gap.done:
            self._gap = None
            await self._redelivery.forget_every_key()
        return True

    async def _resync_every_key(self, sweep: Sweep) -> int | None:
        """A step of a resync of every key (more owed than remembered), stopped once the destination failed again."""
        return await self._resync.step(sweep, keep_going=lambda: not self._redelivery.failed_in_pass)

    def _trimmed(self, what: str) -> str:
        return f"{what} trimmed from {self.config.stream} before group {self.config.group} delivered them"

