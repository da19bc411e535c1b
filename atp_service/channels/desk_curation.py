"""A round's curation by the channel desk (``ChannelDesk``): the SKUs marked since the last round curated
for every channel a slice at a time (C1), stock-outs offered and written between slices (C2), the other
offers made a slice at a time while the estate they were curated by is current.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from atp_service.channels.aside import SetAside
from atp_service.channels.curator import Curator, Offer, skus_per_slice
from atp_service.channels.estate import Estate
from atp_service.channels.marks import remark, velocity_rank
from atp_service.channels.passes import in_slices
from atp_service.channels.urgent import UrgentWrites, due_now
from atp_service.config import ChannelSettings
from atp_service.config_slices import CELLS_PER_OFFER
from atp_service.engine.clock import Clock
from atp_service.engine.router import Engine
from atp_service.metrics import ChannelMetrics
from reservation import Feed


class DeskCuration:
    """``ChannelDesk``'s rounds of curation and the offers they make to its feeds."""

    engine: Engine
    estate: Estate
    clock: Clock
    settings: ChannelSettings
    metrics: ChannelMetrics
    feeds: dict[str, Feed]
    _dirty: dict[str, dict[str, int]]
    _dirty_at: dict[str, int]
    _round_dirty_at: dict[str, int]
    _velocity: dict[str, tuple[float, int]]
    _half_life_ms: float
    _curator: Curator
    _urgent: UrgentWrites
    _aside: SetAside

    async def curate_dirty(self) -> list[Offer]:
        """C1 for every SKU changed since the last round, for every channel: stock-outs offered and written between
        slices (C2), the other offers returned. In slices (``curate_slice_cells``) with a turn of the loop between
        (after a start, a reload or a baseline every SKU is dirty): a slice reads durable state as it is then; what
        becomes durable meanwhile is marked dirty again (``on_durable``) and curated anew next round."""
        if not self._dirty:
            return []
        started = time.perf_counter()
        dirty, self._dirty = self._dirty, {}
        dirty_at, self._dirty_at = self._dirty_at, {}
        self._round_dirty_at = dirty_at
        by_shard: dict[int, list[str]] = {}
        for sku in dirty:
            by_shard.setdefault(self.engine.place(sku), []).append(sku)
        estate, rest = self.estate, list[Offer]()
        step = skus_per_slice(estate.channels.values(), self.settings.curate_slice_cells)
        try:
            for shard, skus in by_shard.items():
                for at in range(0, len(skus), step):
                    if len(dirty) < len(dirty_at):  # not the first slice
                        self._due_between_slices()
                        await asyncio.sleep(0)
                    if self.estate is not estate:  # reloaded meanwhile: the SKUs left go to the next round
                        remark(self._dirty, self._dirty_at, dirty, dirty_at)
                        return rest
                    part, actor = skus[at:at + step], self.engine.actors[shard]
                    urgent, changed = self._curator.curate_shard(
                        shard, actor.positions(), part, [dirty.pop(s) for s in part], estate.channels, self.feeds,
                        actor.ahead_of_log())
                    self._offer(urgent)
                    rest += changed
        finally:
            await self._urgent.finish()
        self.metrics.curation_seconds.observe(time.perf_counter() - started)
        self.metrics.curated_skus.inc(len(dirty_at))
        return rest

    async def _offer_in_slices(self, offers: list[Offer], estate: Estate) -> None:
        """``_offer`` of a round's changes a slice at a time (``CELLS_PER_OFFER``, C2) while ``estate`` is current."""
        def offer(part: Sequence[Offer]) -> None:
            if self.estate is estate:  # not those of SKUs marked again meanwhile (``Curator.drop_stale``)
                self._offer(self._curator.drop_stale(part, self._dirty, self.engine.place,
                                                     lambda shard: self.engine.actors[shard].positions()))
        try:
            await in_slices(offers, max(1, self.settings.curate_slice_cells // CELLS_PER_OFFER), offer,
                            self._due_between_slices)
        finally:
            await self._urgent.finish()

    def _due_between_slices(self) -> None:
        """C2: stock-outs and changes past their throttle go out between a round's slices (``UrgentWrites``); none once
        the desk stops (a write it cancelled half-way left its updates taken: the round's ``finally`` only offers)."""
        if (task := asyncio.current_task()) is None or not task.cancelling():
            feeds = [feed for name, feed in self.feeds.items() if name not in self._aside]  # its due: never written
            self._urgent.between_slices(*due_now(feeds, self.clock.now_ms()))

    def _offer(self, offers: Sequence[Offer]) -> None:
        now = self.clock.now_ms()
        dirty_at, velocity, half_life = self._round_dirty_at, self._velocity, self._half_life_ms
        for feed, sku, location, value, source_time in offers:
            feed.offer((sku, location), value, source_time, dirty_at.get(sku, now), now,
                       velocity_rank(velocity, half_life, sku))
        for name, feed in self.feeds.items():
            self.metrics.pending.labels(name).set(feed.pending)
