"""Channel feeds in the service: durable changes in, curated and throttled updates out (C1-C3).

Shard actors report every log entry once it is durable (``on_durable``). The desk notes which SKUs and positions
changed, and one task re-curates them — a SKU across all the locations a channel sells from is one numpy gather and
one vectorised ``curate`` — and offers the results to each channel's ``Feed``, which decides what goes out when.
What goes out is written to the channel stream and its state hash by one Lua script call; only then is it published
(and watchable). The desk is the only writer, so versions stay in order with the stream ids (``restamp.py``: C3, C4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from atp_service.channels.aside import SetAside
from atp_service.channels.curator import Curator, Offer, skus_per_slice, zero_lines
from atp_service.channels.estate import Channel, Estate
from atp_service.channels.feeds import Confirmations, known_feeds, next_feeds, unsettled
from atp_service.channels.marks import loaded_times, mark_skus, remark, velocity_at, velocity_rank
from atp_service.channels.passes import in_slices, withdraw_dropped, withdraw_unheld
from atp_service.channels.restamp import restamp_task
from atp_service.channels.urgent import UrgentWrites, due_now
from atp_service.config import ChannelSettings
from atp_service.config_slices import CELLS_PER_OFFER, PUBLISH_WRITES_PER_ROUND
from atp_service.engine.clock import Clock
from atp_service.engine.router import Engine
from atp_service.metrics import ChannelMetrics
from atp_service.retry import Backoff, BackoffPolicy, retry_until_done
from atp_service.storage.channel_store import ChannelStore, WriteRefused, settle_noted, write_failure_reason
from atp_service.storage.channel_wire import values_of
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.tasks import cancel_and_wait, each_to_its_end, finish_uncancelled
from reservation import ChannelUpdate, FactKind, Feed, Key, LogEntry, NotFound, Published, Reason
from reservation._events import CountsLoaded, FactApplied, HoldMoved, SafetyStockSet, Shipped

log = logging.getLogger(__name__)
DESK_RETRY = BackoffPolicy(first_s=0.05, max_s=2.0)
"""Waits of the desk between tries while Redis does not answer."""
_DEMAND = (FactKind.SALE, FactKind.SHIPMENT)


class ChannelDesk:
    def __init__(self, engine: Engine, estate: Estate, store: ChannelStore, clock: Clock,
                 settings: ChannelSettings, metrics: ChannelMetrics | None = None) -> None:
        self.engine, self.estate, self.store, self.clock, self.settings = engine, estate, store, clock, settings
        self.metrics = metrics or ChannelMetrics()
        self.feeds: dict[str, Feed] = {}
        self._retired: dict[str, Feed] = {}  # removed channels' feeds with a write on its way (``feeds.py``)
        # sku -> location -> newest source time of a durable change there; and when it became durable
        self._dirty: dict[str, dict[str, int]] = {}
        self._dirty_at: dict[str, int] = {}
        self._velocity: dict[str, tuple[float, int]] = {}  # sku -> (decayed demand units, at)
        self._curator = Curator()
        self._round_dirty_at: dict[str, int] = {}
        self._zero_lines: list[tuple[Feed, int, frozenset[str]]] = []  # see curator.zero_lines
        self._urgent = UrgentWrites(lambda only: self.publish_due(once=True, stockouts_only=only))  # between slices
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._wake = asyncio.Event()
        self._aside = SetAside(store, clock)  # channels a key of another type keeps out of the writes
        self.confirmations = Confirmations()  # watches wait on it for what the stream holds above the published
        self._task: asyncio.Task[None] | None = None
        self.restamps_task: asyncio.Task[None] | None = None  # keys a publisher delivered at versions Redis lost, C4
        self._half_life_ms = settings.velocity_half_life_s * 1000

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Load what each channel last published, curate everything, publish the differences."""
        await self._load_feeds(self.estate)
        self._zero_lines = zero_lines(self.estate.channels, self.feeds)
        for actor in self.engine.actors:
            actor.listeners.append(self.on_durable)
            actor.undo_listeners.append(self.on_undone)
        await self._mark_everything()
        await self._withdraw_uncurated()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="channel-desk")
        self.restamps_task = restamp_task(self.store, lambda: self.feeds, self.clock.now_ms, self.poke, self.metrics)

    @property
    def task(self) -> asyncio.Task[None] | None:  # the desk's loop (watched: it ends only when stopped, or by a bug)
        return self._task

    async def stop(self) -> None:
        for actor in self.engine.actors:
            with contextlib.suppress(ValueError):
                actor.listeners.remove(self.on_durable)
            with contextlib.suppress(ValueError):
                actor.undo_listeners.remove(self.on_undone)
        # Each stopped, those after a failed one too: a failure is raised last (said by the service's watch already).
        await each_to_its_end(lambda: cancel_and_wait(self.restamps_task), lambda: cancel_and_wait(self._task),
                              self._urgent.stop)

    async def reload(self, estate: Estate, swapped: Callable[[], None] = lambda: None) -> dict[str, int]:
        """Swap in a new estate: re-curate, publish only what changed. ``swapped`` is called with the swap, no await
        between: the service takes it with the desk even if the caller goes during the passes (R8: no half)."""
        await self._load_feeds(estate)
        self.estate = estate
        swapped()
        self._zero_lines = zero_lines(self.estate.channels, self.feeds)
        self._curator.reset()
        # Done whole even if the caller goes (R8): a key left at a dropped location keeps its number.
        await finish_uncancelled(asyncio.ensure_future(self._reload_passes()))
        return {name: len(feed.published) for name, feed in self.feeds.items()}

    async def _reload_passes(self) -> None:
        """A per-location channel that no longer sells from a location is shown 0 there at once (C1), a channel turned
        network at every location, and a network channel at every SKU it no longer sells from any location of
        (``unheld``): its last number, or one waiting or being written, which no curation would ever correct."""
        await self._withdraw_uncurated()
        await self._mark_everything()
        self._wake.set()  # here, not in ``reload``: its caller may be gone, the passes' work is not

    async def _withdraw_uncurated(self) -> None:
        """At the start and at a reload, a key published once is shown 0 where nothing would curate it again: one the
        estate no longer curates (C1: changed while the service was down, a restart being how most deployments apply
        it, or by the reload) and one no position stands behind (``unheld``: Redis lost its entries, C4; or a network
        channel's SKU at none of the locations it sells from now, C1)."""
        size = self.settings.curate_slice_cells
        for channel in list(self.estate.channels.values()):
            await withdraw_dropped(self.feeds[channel.name], channel, size, self.clock.now_ms)
            await withdraw_unheld(self.feeds[channel.name], channel, self.engine, size, self.clock.now_ms)

    async def _load_feeds(self, estate: Estate) -> None:
        """The feeds of ``estate``: new channels' published state is read first (the only awaits),
        and only then is anything changed — a read that fails leaves the old feeds as they were."""
        known = known_feeds(self.feeds, self._retired)  # C4: a channel added back while its write is on its way
        stored = {name: await self.store.load(name) for name in estate.channels if name not in known}
        self.feeds, self._retired = next_feeds(estate.channels, known, stored, self.clock.now_ms())

    def poke(self) -> None:  # look at the feeds now (tests with a manual clock call it after moving time)
        self._wake.set()

    # -- intake: runs inside a shard actor's completion callback; keep it short ------------
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

    # -- the loop ------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = Backoff(DESK_RETRY)
        while True:
            if not self._dirty:
                await self._sleep_until_due()
            self._wake.clear()
            try:
                await self.run_round()
                backoff.reset()
            except STORAGE_ERRORS:
                await backoff.wait()

    async def run_round(self) -> None:
        """Publish the stock-outs offered since the last round, curate what changed, offer it, publish what is due."""
        await self.publish_due(urgent_only=True)
        estate = self.estate
        self._urgent.begin_round(PUBLISH_WRITES_PER_ROUND)
        rest = await self.curate_dirty()
        try:
            if rest:
                await self.publish_due(urgent_only=True)
        finally:
            # Curated is as good as offered (the curator notes it): a failed write of the stock-outs
            # must not lose the rest (C4). Unless the estate was reloaded meanwhile: the rest was
            # curated by the old one, and the reload has every SKU curated again by the new one.
            await self._offer_in_slices(rest, estate)
        await self.publish_due()

    async def _sleep_until_due(self) -> None:
        timeout = self._aside.sleep_s(self.feeds, self.clock.now_ms())
        if timeout == 0:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

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

    async def publish_due(self, urgent_only: bool = False, once: bool = False,
                          stockouts_only: bool = False) -> list[ChannelUpdate]:
        """Take what each feed may publish now, write it, confirm it (or give it back); a round's last call again
        while a feed filled its batch (``PUBLISH_WRITES_PER_ROUND``: one a round held a busy channel back, C2)."""
        limit, out, aside = self.settings.publish_batch_max, list[ChannelUpdate](), self._aside
        await aside.recheck(self.feeds)
        writes = -(-sum(f.pending for f in self.feeds.values()) // limit)
        for _ in range(1 if urgent_only or once else min(PUBLISH_WRITES_PER_ROUND, max(1, writes))):
            now = self.clock.now_ms()
            taken = [(name, feed, [] if name in aside else feed.take(
                now, min(limit, feed.stockouts_pending) if stockouts_only else limit, urgent_only or stockouts_only))
                for name, feed in self.feeds.items()]
            if not any(updates for _, _, updates in taken):
                break
            try:
                await self.store.write((n, self.estate.channels[n].stream_maxlen, u) for n, _, u in taken)
            except STORAGE_ERRORS as exc:
                await self._settle(taken, exc)
                raise
            done = self.clock.now_ms()
            for name, feed, updates in taken:
                feed.confirm(updates)
                self._observe(name, updates, done)
                self.metrics.feed_published(name, feed.coalesced, feed.throttled, feed.overdue)
                feed.coalesced = feed.throttled = feed.overdue = 0
                out += values_of(updates)  # a start's marker carries no update (``RunFeed``)
            self.confirmations.note()
            self._retired = unsettled(self._retired)  # a removed channel's feed, its write landed
            if all(len(updates) < limit for _, _, updates in taken):
                break  # every feed took all it may now
        for name, feed in [] if urgent_only or once else self.feeds.items():  # C2's bound (max_wait_ms) watched
            self.metrics.oldest_wait.labels(name).set(feed.oldest_wait_ms(self.clock.now_ms()) / 1000)
        return out

    async def _settle(self, taken: list[tuple[str, Feed, list[ChannelUpdate]]], error: BaseException) -> None:
        """A write failed: perhaps it landed, perhaps it is still on its way (a reply lost, a packet
        late: in doubt, R7). Fence it first — after ``fence`` nothing sent before can land — then
        read each stream's newest version: what landed is there and nothing more ever will be (C4).
        Waits for Redis as long as it takes: versions are never reused and a value is believed
        published only once it is in the stream. A refusal (``WriteRefused``) changed nothing."""
        self.metrics.write_failed(write_failure_reason(error))
        log.warning("channel publish failed (%s); settling", error)
        written = [name for name, _, updates in taken if updates]
        self._aside.note(error, written)
        names = [name for name in written if name not in self._aside]  # set aside: its key unreadable

        async def fence_and_read() -> dict[str, int]:
            await self.store.fence()
            return await self._aside.last_versions(names)  # a stream key of another type: set aside, left out
        # Each failed try counts as a failed write: a settle that cannot fence publishes nothing, for
        # as long as it lasts, and the alert on the failures' rate must see it (and the log say why).
        last = await retry_until_done(fence_and_read, STORAGE_ERRORS, DESK_RETRY, settle_noted(
            names, lambda exc, _wait: self.metrics.write_failed(write_failure_reason(exc))))
        refused, now, landed_any = isinstance(error, WriteRefused), self.clock.now_ms(), False
        for name, feed, updates in taken:
            if not updates:
                continue
            top = last.get(name, 0)  # set aside: refused, or its stream gone (given back: written again)
            landed = [] if refused else [u for u in updates if u.version <= top]  # one script call: all or none
            feed.confirm(landed)
            self._observe(name, landed, now)
            feed.give_back(updates[len(landed):], now)
            feed.version = max(feed.version, top)  # a version in the stream is never used again
            landed_any = landed_any or bool(landed)
        self.metrics.settles.labels("refused" if refused else "landed" if landed_any else "not_landed").inc()
        self._retired = unsettled(self._retired)
        self.confirmations.note()

    def _observe(self, channel: str, updates: list[ChannelUpdate], done: int) -> None:
        for u in values_of(updates):  # a start's marker is no value published
            kind = "baseline" if u.previous is None else "stockout" if u.quantity == 0 else "change"
            pair = self._children.get((channel, kind))
            if pair is None:
                pair = self._children[(channel, kind)] = (self.metrics.published.labels(channel, kind),
                                                          self.metrics.delay.labels(channel, kind))
            pair[0].inc()
            if u.event_time:
                pair[1].observe(max(0, done - u.event_time) / 1000)

    # -- reads -----------------------------------------------------------------------
    def channel(self, name: str) -> Channel:
        channel = self.estate.channels.get(name)
        if channel is None:
            known = ", ".join(sorted(self.estate.channels)) or "none configured"
            raise NotFound(f"channel: unknown channel {name!r} (known: {known})", Reason.CHANNEL_NOT_FOUND)
        return channel

    def snapshot(self, name: str) -> tuple[int, list[tuple[Key, Published]]]:
        """Every published value of a channel and the version they are current at, in no order: a sort
        of a per-location channel's millions of keys held the event loop (3 s for 1,000,000 keys)."""
        self.channel(name)
        feed = self.feeds[name]
        return feed.published_version, list(feed.published.items())
