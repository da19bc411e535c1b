"""The channel desk's intake (``ChannelDesk``): each durable entry's SKUs and positions marked for the next
round's curation, a per-location stock-out offered at once (C2), the sales velocity kept; an entry taken
back marks its SKUs again (C4). It runs inside a shard actor's completion callback: it stays short.
"""

from __future__ import annotations

import asyncio

from atp_service.channels.curator import Curator
from atp_service.channels.marks import loaded_times, mark_skus, velocity_at
from atp_service.channels.passes import in_slices
from atp_service.config import ChannelSettings
from atp_service.engine.clock import Clock
from atp_service.engine.router import Engine
from reservation import FactKind, Feed, LogEntry
from reservation._events import CountsLoaded, FactApplied, HoldMoved, SafetyStockSet, Shipped

_DEMAND = (FactKind.SALE, FactKind.SHIPMENT)


class DurableMarks:
    """``ChannelDesk``'s marks: what changed since the last round, and the demand that orders its updates."""

    engine: Engine
    clock: Clock
    settings: ChannelSettings
    _dirty: dict[str, dict[str, int]]
    _dirty_at: dict[str, int]
    _velocity: dict[str, tuple[float, int]]
    _half_life_ms: float
    _curator: Curator
    _zero_lines: list[tuple[Feed, int, frozenset[str]]]
    _wake: asyncio.Event

    def on_undone(self, shard: int, entry: LogEntry) -> None:
        """An entry taken back (its append failed): curate its SKUs again, from what is durable (C4)."""
        now = self.clock.now_ms()
        for event in entry.events:
            if isinstance(event, FactApplied):
                sku, loc = event.fact.sku, event.fact.location
            elif isinstance(event, (HoldMoved, Shipped, SafetyStockSet)):
                sku, loc = event.sku, event.location
            else:
                if isinstance(event, CountsLoaded):
                    self._mark_loaded(event, False, now)
                continue
            self._dirty.setdefault(sku, {}).setdefault(loc, 0)
            self._dirty_at.setdefault(sku, now)
        self._wake.set()

    def on_durable(self, shard: int, entry: LogEntry) -> None:
        dirty, ts, now = self._dirty, entry.ts, self.clock.now_ms()
        actor = self.engine.actors[shard]
        zero_lines, store, stockouts = self._zero_lines, actor.positions(), False
        ahead = in_flight[0] if zero_lines and (in_flight := actor.ahead_of_log()) else None  # C4: moves in flight
        demand: dict[str, int] = {}
        for event in entry.events:
            if isinstance(event, FactApplied):
                f = event.fact
                sku, loc, t = f.sku, f.location, f.event_time
                if f.kind in _DEMAND:
                    demand[sku] = demand.get(sku, 0) + abs(f.quantity)
            elif isinstance(event, HoldMoved):
                sku, loc, t = event.sku, event.location, ts
                if event.d_reserved > 0:
                    demand[sku] = demand.get(sku, 0) + event.d_reserved
            elif isinstance(event, (Shipped, SafetyStockSet)):
                sku, loc, t = event.sku, event.location, ts
            else:
                if isinstance(event, CountsLoaded):
                    self._mark_loaded(event, True, now)
                continue
            locs = dirty.get(sku)
            if locs is None:
                locs = dirty[sku] = {}
                self._dirty_at[sku] = now
            if locs.get(loc, 0) < t:
                locs[loc] = t
            available = store.available(sku, loc) if zero_lines else None  # read once for every channel
            if available is not None:
                if ahead:
                    available -= ahead.get((sku, loc), 0)
                for feed, line, sells_from in zero_lines:  # C2: a per-location stock-out is offered at once
                    if available <= line and loc in sells_from:
                        feed.offer((sku, loc), 0, t, now, now)  # E11: no-op unless it showed more
                        # Past the curator: a later value equal to its offer before this 0 is a change now
                        self._curator.forget(feed.channel, shard, store, sku)
                        stockouts = True
        for sku, units in demand.items():
            self._velocity[sku] = (velocity_at(self._velocity, self._half_life_ms, sku, now) + units, now)
        if dirty or stockouts:
            self._wake.set()

    def _mark_loaded(self, event: CountsLoaded, durable: bool, now: int) -> None:
        """A baseline block: its SKUs are curated whole in the next round, stock-outs first (C2)."""
        mark_skus(self._dirty, self._dirty_at, event.skus, loaded_times(event) if durable else 0, now)  # undone: 0

    async def _mark_everything(self) -> None:
        """Every SKU of every shard dirty, whole: one mark per SKU (``mark_skus``), not per position."""
        for shard in range(len(self.engine.actors)):
            await asyncio.sleep(0)
            await in_slices(self.engine.actors[shard].positions().sku_names(), self.settings.curate_slice_cells,
                            lambda skus: mark_skus(self._dirty, self._dirty_at, skus, 0, self.clock.now_ms()))
