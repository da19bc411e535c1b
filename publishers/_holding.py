"""A publisher's part in its group's lease (``_lease``): standby until it holds it, renewed while it
does, given up when it stops, and what losing it means (metrics, log events)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.tasks import cancel_and_wait

from ._config import PublisherConfig
from ._lease import Lease, LeaseLapsing
from ._metrics import PublisherMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")


class Halted(Exception):
    """A stop came, or the lease was lost, while a chunk was being delivered: it is left pending for
    the next start or the next holder."""


async def unless_halted(work: Awaitable[T], halt: asyncio.Event, lost: Callable[[str], None]) -> T:
    """``work``'s result, or ``Halted`` as soon as ``halt`` is set (``work`` cancelled: a request cut
    off in flight is sent again (same webhook-id; Shopify: compare-and-set) by the next holder). A
    stop signal or a lost lease ends a wait of minutes (backoff, Retry-After, Shopify's throttle) at
    once instead of after it. ``LeaseLapsing`` from ``work`` (nothing sent): ``lost`` is told."""
    if halt.is_set():
        if asyncio.iscoroutine(work):
            work.close()
        raise Halted
    task = asyncio.ensure_future(work)
    halting = asyncio.ensure_future(halt.wait())
    try:
        await asyncio.wait((task, halting), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        # This publisher is cancelled: its delivery must not go on alone, or it could send an
        # older value after a successor sent a newer one, which would then lose at the destination.
        # Its own end (a failure in the same turn) must not replace the cancellation.
        with contextlib.suppress(Exception):
            await cancel_and_wait(task)
        raise
    finally:
        halting.cancel()
    if task.done():
        try:
            return task.result()
        except LeaseLapsing as exc:  # a paused holder woke: nothing was sent
            lost(str(exc))
            raise Halted from None
    await cancel_and_wait(task)
    raise Halted


class Holding:
    def __init__(self, config: PublisherConfig, client: Any, metrics: PublisherMetrics,
                 on_lost: Callable[[], None]) -> None:
        self.config, self.metrics = config, metrics
        self.lease = Lease(client, config.lease_key, config.lease_s, config.send_timeout_s)
        self._on_lost = on_lost

    def _event(self, name: str, **more: Any) -> dict[str, Any]:
        cfg = self.config
        return {"event": name, "channel": cfg.channel, "group": cfg.group, **more}

    def _held(self, value: int) -> None:
        self.metrics.lease_held.labels(self.config.channel, self.config.group).set(value)

    async def wait_to_hold(self, stop: asyncio.Event) -> bool:
        """Standby until this publisher holds the lease (True) or a stop comes (False)."""
        cfg, lease, announced = self.config, self.lease, False
        while not stop.is_set():
            try:
                if await lease.take():
                    self._held(1)
                    log.info("%s: holding the delivery lease %s of group %s: delivering", cfg.channel, cfg.lease_key,
                             cfg.group, extra=self._event("publisher_lease_taken", token=lease.token))
                    return True
                if not announced:
                    holder = await lease.holder()
                    log.info("%s: standby: another publisher (%s) delivers group %s; taking over when its lease "
                             "lapses", cfg.channel, holder or "?", cfg.group,
                             extra=self._event("publisher_standby", holder=holder))
                    announced = True
            except STORAGE_ERRORS as exc:
                log.warning("%s: Redis unavailable while taking the delivery lease (%s); retrying", cfg.channel, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), lease.retry_s)
        return False

    async def keep(self) -> None:
        """Renew the lease every fifth of its duration (``RENEWALS_PER_LEASE``), counted from each renewal's send
        (``Lease.renewal_due_in``), until it is lost (a background task)."""
        lease = self.lease
        while lease.held:
            await asyncio.sleep(lease.renewal_due_in())
            try:
                if not await lease.renew():
                    self.lost("another publisher holds it now")
                    return
            except STORAGE_ERRORS as exc:
                # The lease may still be this publisher's in Redis; once it cannot cover a request,
                # nothing more is sent or recorded under it (a standby may take it when it lapses).
                if not lease.covers(lease.send_timeout_s):
                    self.lost(f"not renewed in time, Redis did not answer: {exc}")
                    return

    def lost(self, why: str) -> None:
        """This publisher can no longer count on the lease: it stops delivering and goes standby."""
        if not self.lease.held:
            return
        cfg = self.config
        self.lease.drop()
        self._held(0)
        self.metrics.lease_lost.labels(cfg.channel, cfg.group).inc()
        log.warning("%s: lost the delivery lease of group %s (%s): stopping delivery, standby", cfg.channel,
                    cfg.group, why, extra=self._event("publisher_lease_lost", why=why))
        self._on_lost()

    async def release(self) -> None:
        """Give the lease up (a stop): a standby takes over at once instead of after it lapses."""
        self._held(0)
        if not self.lease.held:
            return
        try:
            await self.lease.release()
        except STORAGE_ERRORS as exc:  # it lapses by itself
            log.warning("%s: could not release the delivery lease (%s); it lapses within %g s", self.config.channel,
                        exc, self.config.lease_s)
