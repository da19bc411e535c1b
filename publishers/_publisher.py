"""``atp-publisher``: a channel stream, read through a consumer group, delivered to an adapter.

Per batch read: entries are decoded (a foreign entry is dead-lettered with the reason; a start's marker, which carries
no update, is followed on and named from, ``_restamp``, never delivered), keys coalesced to their newest version,
versions already delivered skipped (idempotence by version: an older version is never delivered after a newer one,
also after a crash), the rest delivered stock-outs first, then in stream order, within the rate limit, retried with
exponential backoff and jitter, and dead-lettered after ``max_attempts`` (an update the adapter refuses alone,
``Refused``, is dead-lettered alone with its reason; the rest of its batch counts as delivered). Entries are
acknowledged only once settled (delivered, superseded, skipped or dead-lettered), together with
the delivered versions, in one script call that checks the delivery lease's token (``_lease``).

Nothing trimmed is skipped: versions have no gaps within a run of the service, and a run's first entry
names the version it follows (the service's start jumps its versions, C3), so entries this group never
read, or read and left pending, that the stream's trimming (``stream_maxlen``) removed are known by their versions,
and the newest value of each of their keys is delivered from the channel's state hash instead
(``_state_resync``: its stock-outs first, a step at a time with a read of the stream between steps).

Nothing dead-lettered is left behind either: each dead-lettered key is remembered and gets its newest value from the
state hash once the destination answers again (``_redeliver``); nor delivered from versions Redis lost (``_restamp``,
named by the holder at the entries it reads, and by a standby from what it delivered before, ``_standby``; where entries
were trimmed before it read or looked at them, from the state hash, ``_compare``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from atp_service.logs import EveryInterval
from atp_service.storage.channel_wire import from_fields, values_of
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.nodes import Nodes, NotReplicated
from atp_service.storage.resp import as_text, group_lost, make_group, seq_of, stream_entries
from atp_service.tasks import cancel_and_wait
from reservation import TokenBucket

from ._claim import Takeover
from ._compare import Comparison
from ._config import PublisherConfig
from ._delivering import Delivering
from ._delivery import Adapter
from ._gaps import TrimmedGaps
from ._holding import Halted, Holding
from ._lease import SEND_GUARD
from ._metrics import PublisherMetrics
from ._reading import Read, Reader, link_of
from ._redeliver import DEAD_LETTER_LOG_EVERY_S, Redelivery
from ._replicas import Replicas
from ._restamp import LostNames, still_known
from ._standby import StandbyLooks
from ._startup import refuse_evicting_redis
from ._state_resync import StateResync, Sweep

log = logging.getLogger(__name__)


class Publisher(TrimmedGaps, Delivering):
    """Its lease held, then its group's entries read and each batch delivered (``Delivering``, _delivering.py);
    what trimming removed before it read caught up from the state hash (``TrimmedGaps``, _gaps.py)."""

    def __init__(self, config: PublisherConfig, client: Any, adapter: Adapter, metrics: PublisherMetrics,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 now_ms: Callable[[], int] | None = None, writer: Nodes | None = None) -> None:
        self.config, self.client, self.adapter, self.metrics = config, client, adapter, metrics
        metrics.watch(config.channel, adapter.name, config.group)
        self._sleep = sleep
        self._now_ms = now_ms or (lambda: int(asyncio.get_running_loop().time() * 1000))
        self._bucket: TokenBucket | None = None
        self._delivered: dict[str, int] = {}
        self._position = 0
        """Newest version this group has read (its last-delivered id): the next one is the one after."""
        self._gap: Sweep | None = None
        """Versions trimmed unread, caught up a step at a time; every key owed in Redis meanwhile."""
        self._stop = asyncio.Event()
        self._halt = asyncio.Event()
        """Set by a stop, or when the group's lease is lost: what is being delivered stops at once."""
        self._reader = Reader(config, client)
        self._lost_names = LostNames(config, client, metrics)  # C4: refused by a restamp key of another type, kept
        self._comparison = Comparison(config, client, self._lost_names, metrics, lambda: self._delivered)  # C4
        self._standby = StandbyLooks(config, client, self._lost_names, self._comparison, self._stop)
        self._holding = Holding(config, client, metrics, self._halt.set)
        self.replicas = Replicas(config, writer or Nodes(client), self._holding.lease, metrics)  # a cluster: pass one
        self._resync = StateResync(config, client, metrics, adapter.name, lambda key: self._delivered.get(key, 0),
                                   self._deliver_and_record)
        self.dead_letter_lines = EveryInterval(DEAD_LETTER_LOG_EVERY_S)
        """The rate of ``publisher_dead_lettered`` lines, across this publisher's takeovers (its clock injectable)."""
        self._redelivery = self._new_redelivery()
        self._takeover = Takeover(config, client, metrics, self._holding.lease, self._owe, self._holding.lost)

    def _new_redelivery(self) -> Redelivery:
        return Redelivery(self.config, self.client, self.metrics, self.adapter.name, self._now_ms,
                          lambda key: self._delivered.get(key, 0), self._deliver_and_record,
                          self._resync_every_key, self._holding.lease, self._holding.lost,
                          self.dead_letter_lines)

    # -- lifecycle -----------------------------------------------------------------
    async def run(self) -> None:
        """Until ``stop``: standby until this publisher holds its group's lease (one delivering publisher per channel
        and destination), then deliver while it holds it; standby again if it loses it (naming, ``_standby``)."""
        while not self._stop.is_set():
            if not await self._standby.while_waiting(self._holding.wait_to_hold(self._stop), self._position):
                return
            if not self._stop.is_set():
                self._halt.clear()
            keeper = asyncio.create_task(self._holding.keep())
            guard = SEND_GUARD.set(self._holding.lease.check_send)  # each request of the adapter, checked
            try:
                await self._deliver_while_held()
            finally:
                SEND_GUARD.reset(guard)
                await cancel_and_wait(keeper)
                await self._holding.release()
                await self._resync.aclose()  # its sweeps start again at the next holding: no connection kept meanwhile

    async def hold(self) -> bool:
        """The group's lease taken if free (or this one's), for a caller driving ``process``: none sent without it."""
        return await self._holding.lease.take()

    async def _deliver_while_held(self) -> None:
        """Until a stop or the lease lost: every entry pending in the group, taken over under this
        consumer's name (a restart; a takeover, under any name), first, then new ones."""
        own_pending, group_gone, loaded = True, False, False
        self._redelivery = self._new_redelivery()  # a takeover finds what Redis remembers owed
        self._gap = None  # one left under way is owed in Redis (the mark): the first redelivery pass
        while not self._halt.is_set():
            try:
                if not loaded:  # what the previous holder delivered, read once this one holds the lease
                    await self.prepare()
                    if not await self._takeover.run():  # what it left pending, under any consumer name
                        return  # stopped half-way: the next holder takes over what is left
                    loaded = True
                if group_gone:
                    await self._make_group(again=True)
                    self._position, group_gone = 0, False
                if not own_pending and self._takeover.due():  # read under another name since (a late read)
                    if not await self._takeover.run():
                        return
                    own_pending = True  # what it claimed is read as this consumer's own
                    continue
                if not own_pending and self._redelivery.due():
                    await self._redelivery.run_pass()  # keys whose newest value was dead-lettered (C4)
                    if self._halt.is_set():
                        return
                if not own_pending and not await self._catch_up_trimmed():
                    return  # stopped half-way: the rest is delivered at the next start
                read = await self._read("0" if own_pending else ">")
                if own_pending and not read.ids:
                    own_pending = False
                    continue
                if read.ids:
                    await self.process(read)
            except STORAGE_ERRORS as exc:  # a cluster with no node answering raises no RedisError
                # The stream deleted (and written again without the group), or Redis restored from
                # before the group: no read succeeds until the group is made again.
                group_gone = group_lost(exc)
                if not isinstance(exc, NotReplicated):  # Redis answered, its replicas did not: said by Replicas
                    log.warning("%s: Redis unavailable (%s); retrying in %g s", self.config.channel, exc,
                                self.config.redis_retry_s)
                # What this consumer read but could not settle is still pending in its name:
                # read those first again, or they would wait for the next restart.
                own_pending = True
                await self._sleep(self.config.redis_retry_s)

    def stop(self) -> None:
        self._stop.set()
        self._halt.set()

    async def _make_group(self, again: bool = False) -> None:
        """The consumer group, made where it is missing, from the stream's start: versions already delivered are
        skipped (the delivered hash). ``again``: it went missing while this ran."""
        cfg = self.config
        if await make_group(self.client, cfg.stream, cfg.group) and again:
            log.warning("%s: the stream %s had no consumer group %s (deleted, or Redis restored from before "
                        "it): made again, read from the stream's start", cfg.channel, cfg.stream, cfg.group)

    async def prepare(self) -> None:
        """The consumer group (created if new) and the delivered versions: the first Redis calls."""
        cfg = self.config
        await refuse_evicting_redis(self.client)
        await self._make_group()
        raw = await self.client.hgetall(cfg.delivered_key)
        self._delivered = still_known({as_text(k): int(v) for k, v in raw.items()}, self._delivered)
        groups = await self.client.xinfo_groups(cfg.stream)
        self._position = next((seq_of(g["last-delivered-id"]) for g in groups if as_text(g["name"]) == cfg.group), 0)
        self._bucket = TokenBucket(cfg.rate_limit_per_s, cfg.burst, self._now_ms())
        if self._delivered:  # C2: what a holder before this taking spent is not known
            self._bucket.assume_spent()

    # -- reading -------------------------------------------------------------------
    async def _read(self, start: str) -> Read:
        cfg = self.config
        # A step between reads (a gap's, a redelivery's, a comparison's): no wait for new entries.
        busy = self._gap is not None or self._redelivery.due() or self._comparison.under_way
        if start == "0":
            reply = await self.client.xreadgroup(cfg.group, cfg.consumer, {cfg.stream: start}, count=cfg.read_count)
            entries = [(entry_id, fields) for _, entry_id, fields in stream_entries(reply)]
        else:
            new = await self._reader.read_new(None if busy else cfg.block_ms, self._position)
            entries = list(new.entries)
            if entries:
                # Trimmed between the check and this read, which took the group past them: a gap too, owed in Redis by
                # the read itself (``_reading``: a kill after it loses nothing, C4). Measured, as there, from the lower
                # of this position and the group's: another name's late read may have taken the group past a gap only
                # that reader's mark owes, which no pass looks at again.
                mine = self._position
                self._position = min(mine, seq_of(new.after))
                await self._note_gap(seq_of(entries[0][0]), link_of(entries[0][1]), new.mark, mine)
                self._position = seq_of(entries[-1][0])
        out = Read([], [])
        for entry_id, fields in entries:
            out.ids.append(as_text(entry_id))
            if not fields:  # an own pending entry trimmed from the stream: its key is in the state hash
                out.trimmed.add(seq_of(entry_id))
                continue
            try:
                update = from_fields(fields or {})
            except (KeyError, ValueError) as exc:
                await self._redelivery.dead_letter_raw(as_text(entry_id), fields or {}, f"undecodable entry: {exc!r}")
                continue
            out.updates.append(update)
        await self._lost_names.name(self._delivered, out.updates)  # C3, C4: delivered at versions Redis lost
        if out.updates:  # C4: confirmed now, on the node that served the read (``_replicas``): later, a failover
            try:  # could have moved the slot to a replica that never held what was read
                await self._unless_stopped(self.replicas.confirm())
            except Halted:  # a stop, or the lease lost: nothing of it delivered, its entries stay pending
                return Read([], [])
        return out

    # -- one batch -----------------------------------------------------------------
    async def process(self, read: Read) -> None:
        trimmed = read.trimmed
        why = self._trimmed(f"{len(trimmed)} own pending entries")
        if trimmed:  # a start's marker among them can name nothing now (C4): the state hash instead, ``_compare``
            self._comparison.start("holder", why)
        if trimmed and not await self._resync(lambda v: v in trimmed, why):
            return  # stopped half-way: the entries stay pending, found trimmed again at the next start
        delivered = await self._deliver_newest(values_of(read.updates), confirmed=True)  # by ``_read``; no marker
        if delivered is not None:
            await self._settle(read.ids, delivered)  # fenced off: the lease is lost, the loop ends
