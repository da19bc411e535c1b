"""Prometheus metrics of a publisher process, prefixed ``atp_publisher_``, on its own registry with
the process's own metrics (``process_*``, ``python_*``)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from atp_service.metrics import zeroed
from atp_service.process_metrics import build_info, process_collectors
from reservation import ChannelUpdate

OUTCOMES = ("delivered", "retried", "failed", "superseded", "duplicate", "resynced", "redelivered")


class PublisherMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        process_collectors(r)
        self.build = build_info("atp_publisher_build_info", r, {"redis_py": "redis", "httpx": "httpx"})
        self.deliveries = Counter(
            "atp_publisher_deliveries_total",
            "Updates by outcome: delivered, retried, failed (not retryable), superseded, duplicate, resynced, "
            "redelivered",
            ["channel", "adapter", "outcome"], registry=r,
        )
        self.dead_lettered = Counter(
            "atp_publisher_dead_lettered_total", "Updates moved to the publisher's dead-letter stream", ["channel"],
            registry=r,
        )
        self.redeliver_overflows = Counter(
            "atp_publisher_redeliver_overflows_total",
            "Dead letters past redeliver_max_keys owed keys: a resync of the whole state hash follows", ["channel"],
            registry=r,
        )
        self.rate_limited = Counter(
            "atp_publisher_rate_limited_total", "Times delivery waited for the rate limit", ["channel"], registry=r
        )
        self.lease_held = Gauge(
            "atp_publisher_lease_held",
            "1: this process holds its group's lease and delivers; 0: a standby (or it lost the lease)",
            ["channel", "group"], registry=r,
        )
        self.lease_lost = Counter(
            "atp_publisher_lease_lost_total",
            "Times this process lost its group's lease while delivering (another took it, or paused or unanswered by "
            "Redis until the lease no longer covered a request)",
            ["channel", "group"], registry=r,
        )
        self.claimed = Counter(
            "atp_publisher_claimed_total",
            "Entries pending in the group under other consumer names taken over by this process on taking the "
            "lease (trimmed ones included: their keys resynced from the state hash)",
            ["channel", "group"], registry=r,
        )
        self.not_replicated = Counter(
            "atp_publisher_not_replicated_total",
            "Reads held back, undelivered: fewer than wait_replicas replicas confirmed holding them in time (read and "
            "confirmed again; a failover may lose such a write)", ["channel"], registry=r,
        )
        self.restamp_refused = Counter(
            "atp_publisher_restamp_refused_total",
            "Tries to name keys delivered at versions Redis lost that the channel's restamp key refused (it holds "
            "another type than a hash): the names are kept and tried again, delivery goes on", ["channel"], registry=r,
        )
        self.restamp_owed = Gauge(
            "atp_publisher_restamp_owed_keys",
            "Keys this process delivered at versions Redis lost that are not named to the service yet (the restamp key "
            "refused them): their destinations show the lost values until named", ["channel"], registry=r,
        )
        self.restamp_compared = Counter(
            "atp_publisher_restamp_compared_keys_total",
            "Keys this process delivered whose versions it compared with the channel's state hash, to name those "
            "delivered at versions Redis lost, where entries were trimmed before it read or looked at them (a start's "
            "marker may have been among them)", ["channel"], registry=r,
        )
        self.delay = Histogram(
            "atp_publisher_delivery_delay_seconds", "Published on the channel stream -> delivered",
            ["channel"], buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900), registry=r,
        )

    def watch(self, channel: str, adapter: str, group: str) -> None:
        """Every counter of ``channel`` at 0 from the start (the alerts take ``increase()`` of them,
        which sees nothing of a series' first value: a first dead letter would never page)."""
        zeroed(self.deliveries, *((channel, adapter, outcome) for outcome in OUTCOMES))
        zeroed(self.dead_lettered, (channel,))
        zeroed(self.rate_limited, (channel,))
        zeroed(self.redeliver_overflows, (channel,))
        zeroed(self.not_replicated, (channel,))
        zeroed(self.restamp_refused, (channel,))
        zeroed(self.restamp_compared, (channel,))
        self.restamp_owed.labels(channel).set(0)
        zeroed(self.lease_lost, (channel, group))
        zeroed(self.claimed, (channel, group))
        self.lease_held.labels(channel, group).set(0)  # a standby until it takes the lease

    def outcome(self, channel: str, adapter: str, outcome: str, n: int = 1) -> None:
        self.deliveries.labels(channel, adapter, outcome).inc(n)

    def delivered(self, channel: str, adapter: str, updates: list[ChannelUpdate], failed: int = 0) -> None:
        """``updates`` delivered: counted, and each one's delay since its publication on the stream observed (not
        since its source's ``event_time``: a fact sent late is ``atp_fact_lag_seconds``'s, not this lag); with
        ``failed`` others of their request refused alone."""
        self.outcome(channel, adapter, "delivered", len(updates))
        self.outcome(channel, adapter, "failed", failed)
        now = time.time_ns() // 1_000_000
        for u in updates:
            if u.published_at:
                self.delay.labels(channel).observe(max(0, now - u.published_at) / 1000)
