"""Delivery from the channel's state hash (the last published value of every key, which trimming
cannot remove): the keys whose newest values were trimmed from the stream unread, or owed after
more dead letters than ``redeliver_max_keys``, get their values from it, ``read_count`` at a time.

The stock-outs of the whole hash go first, in a sweep of their own, then the other values (C2: a
drop to 0 is published at once). Page by page in the hash's order, with only each page's
stock-outs first, a 0 on a late page waited behind every earlier page's values and their tokens:
a resync of 100,000 keys at 10 updates/s held it for hours.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from atp_service.storage.channel_wire import state_update
from atp_service.storage.resp import as_text
from reservation import ChannelUpdate

from ._config import PublisherConfig
from ._metrics import PublisherMetrics

log = logging.getLogger(__name__)
Deliver = Callable[[list[ChannelUpdate]], Awaitable[bool]]
"""Deliver and record updates (the publisher's way); False: a stop cut it off."""


class StateResync:
    def __init__(self, config: PublisherConfig, client: Any, metrics: PublisherMetrics, adapter: str,
                 delivered_version: Callable[[str], int], deliver: Deliver) -> None:
        self.config, self.client, self.metrics, self.adapter = config, client, metrics, adapter
        self._delivered_version, self._deliver = delivered_version, deliver

    async def __call__(self, wanted: Callable[[int], bool], why: str,
                       keep_going: Callable[[], bool] = lambda: True) -> bool:
        """Deliver each key's value whose version is ``wanted`` and not delivered yet, the stock-outs
        first. False: stopped half-way, or ``keep_going()`` False after a page."""
        log.warning("%s: %s; delivering their keys' newest values from the channel's state hash",
                    self.config.channel, why)
        for stock_outs in (True, False):
            cursor = 0
            while step := await self.step(wanted, stock_outs, cursor, keep_going):
                cursor = step[0]
                if not cursor:
                    break
            if step is None:
                return False
        return True

    async def step(self, wanted: Callable[[int], bool], stock_outs: bool, cursor: int,
                   keep_going: Callable[[], bool] = lambda: True) -> tuple[int, int] | None:
        """One HSCAN call from ``cursor`` (about ``read_count`` keys): its stock-outs, or its other
        values, ``wanted`` and not delivered yet, delivered. The next cursor (0: the sweep is over)
        and how many were sent; None: stopped, or ``keep_going()`` False after a page. A key that
        drops to 0 after the stock-outs' sweep has a new version, which the stream holds for the
        group to read (or a later catch-up finds trimmed): the second sweep leaves it, and a 0 the
        first dead-lettered is not sent twice."""
        cfg = self.config
        after, found = await self.client.hscan(cfg.state_key, cursor, count=cfg.read_count)
        page = [u for key, value in found.items() if (u := state_update(cfg.channel, key, value)).version
                > self._delivered_version(as_text(key)) and (u.quantity == 0) == stock_outs and wanted(u.version)]
        for start in range(0, len(page), cfg.read_count):
            if not await self._page(page[start:start + cfg.read_count]) or not keep_going():
                return None
        return int(after), len(page)

    async def _page(self, page: list[ChannelUpdate]) -> bool:
        """Counted as taken from the state hash, before it is sent: a resync stopped half-way (or while
        the destination answered) still counts the pages it took."""
        self.metrics.outcome(self.config.channel, self.adapter, "resynced", len(page))
        return await self._deliver(page)
