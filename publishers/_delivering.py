"""A publisher's delivery (``Publisher``): the newest version of each key not delivered yet, stock-outs first
in requests of their own (C2), within the rate limit, retried with backoff and dead-lettered after
``max_attempts`` (an update the destination refuses alone: alone); the versions delivered recorded, with
the entries acknowledged, under the lease (C3).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from reservation import ChannelUpdate, TokenBucket

from ._config import PublisherConfig
from ._delivery import Adapter, DeliveryError, Keyed, Refused, backoff_s, in_requests, split_answered, take_tokens
from ._holding import Halted, Holding, unless_halted
from ._metrics import PublisherMetrics
from ._redeliver import Redelivery
from ._replicas import Replicas

log = logging.getLogger("publishers._publisher")  # the publisher's own, as before its delivery had a module
T = TypeVar("T")


class Delivering:
    """``Publisher``'s deliveries, and the records of what they delivered."""

    config: PublisherConfig
    adapter: Adapter
    metrics: PublisherMetrics
    replicas: Replicas
    _sleep: Callable[[float], Awaitable[None]]
    _now_ms: Callable[[], int]
    _bucket: TokenBucket | None
    _delivered: dict[str, int]
    _halt: asyncio.Event
    _holding: Holding
    _redelivery: Redelivery

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
