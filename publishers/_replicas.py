"""What a publisher reads is delivered only once the stream's replicas hold it (C4).

The service counts a channel write as published only once ``redis_wait_replicas`` replicas hold it
(docs/CHANNELS.md). One they did not confirm is in doubt: a failover that promotes a replica lacking
it loses it, and the desk then gives its versions back and writes what is due then — nothing, when
the key went back to its published value meanwhile (E11). A publisher that delivered it as soon as
the primary's stream held it left its destination showing a value never published (a restock undone
by a sale: units sold that are not on hand), and skipped the version's next value as a duplicate.

So before a publisher delivers anything it read, it renews its lease on a write connection of the
stream's node and sends ``WAIT wait_replicas`` after it on that same connection: stream entries
right after the read that returned them (``_read``), the state hash's values of a resync or
redelivery before each page is delivered. At once, not at their delivery: a resync of trimmed
versions may come between a read and its delivery (minutes, at a slow destination), and a failover
meanwhile, the slot map read again by another call, sent a late confirmation to the promoted
replica — whose replicas hold the renewal, not entries it never received. Redis replicates in order, so once that many
replicas hold the renewal they hold everything the node held when it ran, what was read included
(``WAIT`` counts only the writes of its own connection, hence a write first: a read of pending
entries writes nothing). Short of it the read is held back (``NotReplicated``, counted): nothing of it
is delivered or acknowledged, and the publisher reads again after ``redis_retry_s`` — a stock-out
delayed while the replicas are away, never a value that may be lost.

Why not a marker of the versions the desk confirmed: its own write could be lost by the same
failover, and a marker behind what the replicas hold would hold a stock-out back until the next
write of the channel, however late. The renewal asks the replicas directly, and its lease check
fences a publisher that lost the lease. The publisher's own records (delivered versions, XACK)
need no wait: a failover that loses them makes it deliver confirmed versions again (idempotent by
version, the same webhook-id), never an unconfirmed one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from atp_service.logs import EveryInterval
from atp_service.storage.nodes import Call, Nodes, NotReplicated, Script

from ._config import PublisherConfig
from ._lease import RENEW, Lease, LeaseLapsing
from ._metrics import PublisherMetrics

log = logging.getLogger(__name__)
_RENEW = Script(RENEW)
SENT = ("EVALSHA", "SCRIPT", "WAIT")
"""What ``writer`` sends (the renewal, its script loaded where a node lacks it, WAIT): asked at start."""
HELD_BACK_LOG_S = 60.0
"""A read held back is said at once, then at most once in this long while the replicas stay short
(every read is held back, one each ``redis_retry_s``; ``atp_publisher_not_replicated_total`` counts each)."""


class Replicas:
    def __init__(self, config: PublisherConfig, writer: Nodes, lease: Lease, metrics: PublisherMetrics) -> None:
        """``writer``: the write lanes to the stream's node (its waits set here from ``config``)."""
        self.config, self.writer, self.lease, self.metrics = config, writer, lease, metrics
        writer.wait_replicas, writer.wait_timeout_ms = config.wait_replicas, config.wait_timeout_ms
        self.clock: Callable[[], float] = time.monotonic
        self._held_back_lines = EveryInterval(HELD_BACK_LOG_S, lambda: self.clock(),  # ``clock``, as it is then
                                              event="publisher_not_replicated")
        """Reads held back said at once, then at most once a ``HELD_BACK_LOG_S`` with how many were left out between
        (at the stop: ``say_left_out``); at once again after a confirmation."""
        self._held_back_lines.logger = log

    async def confirm(self) -> None:
        """Returns once ``wait_replicas`` replicas hold all that was read so far (at once without).
        ``NotReplicated``: fewer did in ``wait_timeout_ms``: deliver nothing of it. ``LeaseLapsing``:
        the lease is another's (nothing was sent)."""
        cfg, lease = self.config, self.lease
        if not cfg.wait_replicas:
            return
        try:
            renewed = await self.writer.run_one(Call(_RENEW, [lease.key], [lease.token, lease.lease_ms]))
        except NotReplicated as exc:
            self.metrics.not_replicated.labels(cfg.channel).inc()
            self._held_back(exc)
            raise
        self._held_back_lines.again()
        if not int(renewed):
            raise LeaseLapsing(f"the lease {lease.key} is another publisher's")

    def _held_back(self, exc: NotReplicated) -> None:
        """Said at once, then at most once a ``HELD_BACK_LOG_S``, with how many were left out between:
        Redis answers (no "Redis unavailable"); its replicas do not confirm."""
        cfg = self.config
        fields = self._held_back_lines.fields(event="publisher_not_replicated", channel=cfg.channel)
        if fields is None:
            return
        left_out = fields.get("left_out")
        more = f"; {left_out} more reads held back since the last line" if left_out else ""
        log.warning("%s: what was read is held back, undelivered: its replicas did not confirm it (%s; --wait-replicas"
                    "=%d); read again every %g s%s", cfg.channel, exc, cfg.wait_replicas, cfg.redis_retry_s, more,
                    extra=fields)
