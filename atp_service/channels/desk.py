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
from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

from atp_service.channels.aside import SetAside
from atp_service.channels.curator import Curator, zero_lines
from atp_service.channels.desk_curation import DeskCuration
from atp_service.channels.desk_marks import DurableMarks
from atp_service.channels.estate import Channel, Estate
from atp_service.channels.feeds import Confirmations, RunFeed, Stored, known_feeds, next_feeds, unsettled
from atp_service.channels.passes import withdraw_dropped, withdraw_unheld
from atp_service.channels.restamp import restamp_task
from atp_service.channels.urgent import UrgentWrites
from atp_service.config import ChannelSettings
from atp_service.config_slices import PUBLISH_WRITES_PER_ROUND
from atp_service.engine.clock import Clock
from atp_service.engine.router import Engine
from atp_service.logs import noted_now_and_then
from atp_service.metrics import ChannelMetrics
from atp_service.retry import Backoff, BackoffPolicy, retry_until_done
from atp_service.storage.channel_store import (
    ChannelStore,
    StreamLost,
    WriteRefused,
    settle_noted,
    write_failure_reason,
)
from atp_service.storage.channel_wire import values_of
from atp_service.storage.durability import SETTLE_LOG_EVERY_S, STORAGE_ERRORS
from atp_service.storage.resp import passing
from atp_service.tasks import cancel_and_wait, each_to_its_end, finish_uncancelled
from reservation import ChannelUpdate, Feed, Key, NotFound, Published, Reason, Unavailable

log = logging.getLogger(__name__)
DESK_RETRY = BackoffPolicy(first_s=0.05, max_s=2.0)
"""Waits of the desk between tries while Redis does not answer."""
RELINK_AGAIN = BackoffPolicy(first_s=1.0, max_s=30.0)
"""Waits before a relink found again with no round through since the last (Redis switching between two data sets, a
primary and a replica behind it taking turns): each reads every channel and curates every SKU again."""


class ChannelDesk(DurableMarks, DeskCuration):
    """The feeds' lifecycle, the loop of rounds, the writes and their settling, and reads; what changed is
    marked by ``DurableMarks`` (desk_marks.py), a round curated by ``DeskCuration`` (desk_curation.py)."""

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
        self._feeds_read = asyncio.Lock()  # a reload's read and swap of the feeds, or a relink's: one at a time
        self._relinking = False  # the feeds' memory holds versions Redis lost: no snapshot of it (``_relink``)

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
        async with self._feeds_read:  # not across a relink: the feeds it keeps would be those holding lost versions
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

    # -- the loop ------------------------------------------------------------------
    async def _run(self) -> None:
        backoff, relinks, again = Backoff(DESK_RETRY), Backoff(RELINK_AGAIN), False
        while True:
            if not self._dirty:
                await self._sleep_until_due()
            self._wake.clear()
            try:
                await self.run_round()
                backoff.reset()
                relinks.reset()
                again = False
            except STORAGE_ERRORS:
                await backoff.wait()
            except StreamLost as exc:
                await self._relink(exc, relinks.next_delay() if again else 0.0)
                again = True

    async def _relink(self, loss: StreamLost, wait_s: float = 0.0) -> None:
        """Redis lost versions the desk published (``StreamLost``: back from older data, or the ``{avail}`` node failed
        over to a replica behind it): every channel read again from what Redis holds, as a start reads it, the desk
        alone — the engine's logs are checked by their own shards (R7), and a service restart for the channels' loss
        left every shard unanswered meanwhile. No snapshot of the feeds' memory, which holds the lost values, until
        then (C4). Each new feed's versions begin above every version this run handed out (C3), its first entry a
        marker following what the stream holds: a subscriber or publisher past that is told (re-snapshot, keys
        named to publish again), one at it goes on. Every SKU is curated again against what Redis holds (C1). After
        ``wait_s`` (``RELINK_AGAIN``): a loss found again before any round went through is not read again at once."""
        log.error("channel streams lost versions this service published (%s): every channel is read again from what "
                  "Redis holds in %.2fs; subscribers past it are told to re-snapshot", loss, wait_s,
                  extra={"event": "channel_feeds_relinked", "error": str(loss), "retry_s": round(wait_s, 2)})
        self.metrics.relinks.inc()
        # Cleared only once read again: a relink ended (``ChannelsUnreadable``) or cancelled (the stop) leaves the
        # feeds holding the lost values, which a snapshot showed until the service stopped serving (C4).
        self._relinking = True
        await asyncio.sleep(wait_s)
        async with self._feeds_read:
            before, estate = {**self._retired, **self.feeds}, self.estate  # their writes are over: none in flight
            stored = await retry_until_done(lambda: self._read_feeds(estate), STORAGE_ERRORS, DESK_RETRY,
                                            noted_now_and_then(_relink_waiting, SETTLE_LOG_EVERY_S))
            self.feeds, self._retired = next_feeds(estate.channels, {}, stored, self.clock.now_ms())
            for name, feed in self.feeds.items():
                if (old := before.get(name)) is not None and isinstance(feed, RunFeed):
                    feed.begin_above(old.version)
            self._relinking = False
        self._zero_lines = zero_lines(self.estate.channels, self.feeds)
        self._curator.reset()
        self.confirmations.note()  # a watch waiting on a lost feed's confirmation reads again
        await self._reload_passes()

    async def _read_feeds(self, estate: Estate) -> dict[str, Stored]:
        """Each channel of ``estate`` as Redis holds it. A refusal that waiting does not cure (a state hash of another
        type, a read the ACL denies) ends the desk (``ChannelsUnreadable``, the service restarted, its start failing on
        it by name): waited out, no channel published anything again, and nothing said why."""
        try:
            return {name: await self.store.load(name) for name in estate.channels}
        except ResponseError as exc:
            if passing(exc):
                raise
            raise ChannelsUnreadable(f"channel feeds: Redis refused reading them again after a loss: {exc}") from exc

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

    # -- the writes ----------------------------------------------------------------
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
        lost_under(taken, last)
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
            if not refused and len(landed) < len(updates) and isinstance(feed, RunFeed):
                feed.lost_past(max(u.version for u in updates), top)  # in doubt: maybe landed, read, and lost
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
            # From when its change was durable here, not the source's event_time: a fact sent late (a POS batch
            # uploaded hours later, a store's clock behind) is atp_fact_lag_seconds's, not the desk's lag.
            if u.durable_at:
                pair[1].observe(max(0, done - u.durable_at) / 1000)

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
        if self._relinking:
            raise Unavailable(f"channel {name}: Redis lost versions it published, and the service is reading the "
                              "channel again from what Redis holds; retry shortly", Reason.RECOVERING)
        feed = self.feeds[name]
        return feed.published_version, list(feed.published.items())


class ChannelsUnreadable(Exception):
    """Redis refused reading the channel feeds again after a loss (``ChannelDesk._relink``), as no wait cures."""


def _relink_waiting(exc: BaseException, wait_s: float) -> None:
    log.warning("channel feeds not read again yet after a loss (%s); trying again in %.2fs; nothing is published "
                "meanwhile", exc, wait_s, extra={"event": "channel_relink_waiting", "error": str(exc),
                                                 "retry_s": round(wait_s, 2)})


def lost_under(taken: list[tuple[str, Feed, list[ChannelUpdate]]], last: dict[str, int]) -> None:
    """A settle's read of each stream's newest version (``last``) below a version this run wrote and confirmed: Redis
    came back from older data under the write in doubt. Written on above a marker linked to the restored stream, the
    desk's memory still held the lost values, which a snapshot then showed at a version the restart's marker followed:
    kept by that subscriber for good (C4). ``StreamLost``, as the write script's refusal of the same loss."""
    for name, feed, updates in taken:
        top = last.get(name)  # none: set aside, its stream unreadable
        # Not what Redis held when the run read it (``loaded``: the state hash may be past a stream deleted since);
        # ``resumed_from`` would not do: a settle that found an earlier write not landed moved it up to the published.
        if updates and top is not None and isinstance(feed, RunFeed) and top < feed.published_version and (
                feed.published_version > feed.loaded):
            raise StreamLost(f"{name}: its stream ends at version {top}, below version {feed.published_version} that "
                             "this service published: Redis lost it (back from older data, a failover to a replica "
                             "behind)")
