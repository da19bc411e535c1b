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
from typing import Any, TypeVar

from atp_service.storage.channel_wire import from_fields, values_of
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.nodes import Nodes, NotReplicated
from atp_service.storage.resp import as_text, group_lost, make_group, seq_of, stream_entries, stream_info
from atp_service.tasks import cancel_and_wait
from reservation import ChannelUpdate, TokenBucket

from ._claim import Takeover
from ._compare import Comparison
from ._config import PublisherConfig
from ._delivery import Adapter, DeliveryError, Keyed, Refused, backoff_s, in_requests, split_answered, take_tokens
from ._holding import Halted, Holding, unless_halted
from ._lease import SEND_GUARD
from ._metrics import PublisherMetrics
from ._reading import Read, Reader, gap_before, link_of
from ._redeliver import Redelivery
from ._replicas import Replicas
from ._restamp import LostNames, still_known
from ._standby import StandbyLooks
from ._startup import refuse_evicting_redis
from ._state_resync import StateResync, Sweep, sweep_owing

log = logging.getLogger(__name__)
T = TypeVar("T")


class Publisher:
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
        self._redelivery = self._new_redelivery()
        self._takeover = Takeover(config, client, metrics, self._holding.lease, self._owe, self._holding.lost)

    def _new_redelivery(self) -> Redelivery:
        return Redelivery(self.config, self.client, self.metrics, self.adapter.name, self._now_ms,
                          lambda key: self._delivered.get(key, 0), self._deliver_and_record,
                          self._resync_every_key, self._holding.lease, self._holding.lost)

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

    async def _deliver_newest(self, updates: list[ChannelUpdate], confirmed: bool = False) -> dict[str, int] | None:
        """The newest version of each key not delivered yet, delivered: the versions delivered per
        key, or None when a stop cut the delivery off (what was delivered is recorded then).
        ``confirmed``: the replicas hold ``updates`` already (``_read``); else they are asked first."""
        newest: dict[str, ChannelUpdate] = {}
        for u in sorted(updates, key=lambda u: u.version):  # the last one per key wins
            key = f"{u.sku}\t{u.location}"
            if key in newest:
                self.metrics.outcome(self.config.channel, self.adapter.name, "superseded")
            newest[key] = u
        todo = [(key, u) for key, u in newest.items() if u.version > self._delivered.get(key, 0)]
        self.metrics.outcome(self.config.channel, self.adapter.name, "duplicate", len(newest) - len(todo))
        # Stock-outs first (C2: a channel must stop selling what is gone before anything else), in requests of their
        # own of at most a full bucket (a request waits for a token per update: 9 s for 100 at the defaults). Then
        # version order: each key has one update here, so no key's older value can follow its newer.
        todo.sort(key=lambda item: (item[1].quantity != 0, item[1].version))
        outs, size = sum(u.quantity == 0 for _, u in todo), self.config.delivery_batch
        cuts = ((todo[:outs], min(size, self._bucket.burst if self._bucket else size)), (todo[outs:], size))
        delivered: dict[str, int] = {}
        tries, failed_outs = self.config.max_attempts, list[tuple[str, ChannelUpdate]]()
        try:
            if todo and not confirmed:  # C4: only what the replicas hold (``NotReplicated``: none delivered)
                await self._unless_stopped(self.replicas.confirm())
            for chunk in (part[at:at + n] for part, n in cuts for at in range(0, len(part), n)):
                if not (answered := await self._deliver(chunk, tries, delivered)):
                    failed_outs += [(key, u) for key, u in chunk if u.quantity == 0 and key not in delivered]
                elif failed_outs:  # C2: the destination is back; its stock-outs go before the rest, tried once more
                    failed_outs = await in_requests(failed_outs, cuts[0][1],  # as they went (failing again: owed)
                                                    lambda part: self._deliver(part, 1, delivered, owed=True))
                # Once a request failed every try (the destination down) the others get one each until one is answered,
                # not max_attempts with backoff each (C2: stock-outs read later waited ~40 min); then owed, as any (C4).
                tries = self.config.max_attempts if answered else 1
        except Halted:
            # Stopped half-way (a destination down, its waits and retries under way): what was
            # delivered is recorded, nothing is acknowledged. The next start reads this consumer's
            # pending entries again and skips the versions delivered; the rest are delivered then,
            # not dead-lettered now for want of the attempts a stop cut off.
            log.info("%s: stopping with %d updates of this read undelivered; they stay pending",
                     self.config.channel, len(todo) - len(delivered))
            await self._record(delivered)
            return None
        return delivered

    # -- what trimming removed -------------------------------------------------------
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

    async def _deliver_and_record(self, updates: list[ChannelUpdate]) -> bool:
        return (delivered := await self._deliver_newest(updates)) is not None and await self._record(delivered)

    async def _deliver(self, chunk: Keyed, tries: int, delivered: dict[str, int], owed: bool = False) -> bool:
        """Deliver one chunk (key, update), tried at most ``tries`` times, the versions delivered put in ``delivered``
        (the rest were dead-lettered: what was still unanswered after its last try, or what was refused one by one):
        whether the destination answered (False: every try failed, retryable). ``owed``: dead-lettered already,
        owed their newest value: a retryable failure writes no second dead letter."""
        cfg, channel, name, updates = self.config, self.config.channel, self.adapter.name, [u for _, u in chunk]
        assert self._bucket is not None, "run() prepares the bucket"
        await self._unless_stopped(take_tokens(self._bucket, len(updates), self._now_ms, self._sleep,
                                               self.metrics.rate_limited.labels(channel).inc))
        reason, retryable = "", True
        for attempt in range(1, tries + 1):
            try:
                answer = await self._unless_stopped(self._send(updates))
            except DeliveryError as exc:
                reason, retryable = exc.reason, exc.retryable
                if exc.taken or exc.refused:  # parts answered before it failed (``in_halves``): settled, not retried
                    chunk = await self._answered(chunk, exc.taken, exc.refused, attempt, delivered)
                    updates = [u for _, u in chunk]
                self.metrics.outcome(channel, name, "retried" if exc.retryable else "failed", len(updates))
                if not exc.retryable:
                    break
                if attempt < tries:
                    await self._unless_stopped(self._sleep(backoff_s(cfg.backoff_base_s, cfg.backoff_max_s, attempt)))
                continue
            self._redelivery.succeeded()
            await self._answered(chunk, updates, list(answer or ()), attempt, delivered)
            return True
        if not (owed and retryable):
            await self._redelivery.dead_letter([(u, reason) for u in updates], attempt, retryable)
        return not retryable

    async def _answered(self, chunk: Keyed, taken: list[ChannelUpdate], refused: list[Refused], attempt: int,
                        delivered: dict[str, int]) -> Keyed:
        """Of ``chunk``, ``taken`` put in ``delivered`` but ``refused`` (dead-lettered alone): the rest returned. Known
        delivered at once: a Redis error later in the read (a dead letter not written) lost them, resent at each try."""
        took, rest = split_answered(chunk, taken, refused)
        delivered.update((key, u.version) for key, u in took)
        self._delivered.update({k: max(u.version, self._delivered.get(k, 0)) for k, u in took})
        self._holding.lease.delivered({k: u.version for k, u in took})  # in the next record, this read's or not
        self.metrics.delivered(self.config.channel, self.adapter.name, [u for _, u in took], failed=len(refused))
        if refused:
            await self._redelivery.dead_letter([(r.update, r.reason) for r in refused], attempt, retryable=False)
        return rest

    async def _send(self, updates: list[ChannelUpdate]) -> Any:
        self._holding.lease.check_send()  # any adapter; an HTTP one checks each of its requests again
        return await self.adapter.deliver(self.config.channel, updates)

    async def _unless_stopped(self, work: Awaitable[T]) -> T:
        return await unless_halted(work, self._halt, self._holding.lost)

    # -- settling ------------------------------------------------------------------
    async def _settle(self, ids: list[str], delivered: dict[str, int]) -> bool:
        """The versions delivered raised (never lowered) and ``ids`` acknowledged under the lease: one script (C3).
        False: fenced off, nothing written; delivery stops. Known delivered already (``_answered``), whatever the
        record's fate (its answer lost with Redis going down, which may lose what was read, not what was sent, C4)."""
        cfg = self.config
        if not await self._holding.lease.settle(cfg.delivered_key, cfg.stream, cfg.group, delivered, ids):
            self._holding.lost("its record was fenced off: another publisher holds the lease")
            return False
        return True

    async def _record(self, delivered: dict[str, int]) -> bool:
        """The versions delivered, without acknowledging their entries (a stop half-way)."""
        return await self._settle([], delivered) if delivered else True
