"""Prometheus metrics, all prefixed ``atp_``: one ``Metrics`` per service, on its own registry.

Each room gets only its group (``EngineMetrics`` for the shard actors and router, ``StorageMetrics``
for the log, ``IntakeMetrics`` for the fact desks, ``ChannelMetrics`` for the channel desk,
``EdgeMetrics`` for the gRPC face), injected by the service that wires them. A component built
without one (a test, a tool that only reads) records into a private registry nobody scrapes.
The service's registry also carries the process's own metrics (``process_*``, ``python_*``) and
``atp_build_info``, the versions running.

The instruments are ``atp_service.instruments``' lean ones, exposed exactly as prometheus_client's
would be: update them on the event loop's thread only (a scrape from another thread only reads).
"""

from __future__ import annotations

from collections.abc import Iterable

import prometheus_client
from prometheus_client import CollectorRegistry

from atp_service.clock_metrics import ClockMetrics
from atp_service.instruments import Counter, CounterChild, Gauge, Histogram, Reading, SizeHistogram
from atp_service.process_metrics import build_info, process_collectors
from reservation import FactKind

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
FACT_ORIGINS = ("grpc", "stream")
"""``atp_facts_total``'s origins of every kind of fact (RecordEvents, the input streams); LoadCounts' is load."""
CAPACITY_LIMITS = ("max_live_reservations_per_shard", "max_resolved_reservations_per_shard", "max_positions_per_shard",
                   "max_dedupe_entries_per_shard", "max_reserve_streams", "max_watchers",
                   "max_watch_snapshot_keys", "max_open_service_streams")
"""``atp_capacity_refusals_total``'s limits: a shard's bounds on what it remembers and holds, the edge's on
open streams."""
APPEND_FAILURE_REASONS = ("out_of_memory", "timeout", "connection", "fenced", "not_replicated", "refused", "other")
"""``atp_log_append_failures_total``'s reasons (``storage.durability.append_failure_reason``), a closed set:
Redis at its ``maxmemory`` refusing writes, no answer in time, no connection, another owner of the shard,
another refusal by Redis or the append script, anything else. ``atp_channel_write_failures_total``'s too
(``storage.channel_store.write_failure_reason``)."""
RECOVERY_FAILURE_REASONS = ("data", "redis", "bug")
"""``atp_group_recoveries_failed_total``'s reasons (``ownership = leases``), a closed set: its snapshot or log
refused for its data (R7, E10: no process serves the group until an operator acts), Redis not answering or
refusing the reads, anything else (a bug)."""


def zeroed(counter: Counter | prometheus_client.Counter, *label_sets: tuple[str, ...]) -> None:
    """Export ``counter``'s children of ``label_sets`` at 0 from the start. A labelled child exists
    only once touched, and ``increase()``/``rate()`` see nothing of a series' first value: an alert
    on ``increase(...) > 0`` would never fire for the first event (often the only one, say one
    Redis failover's appends in doubt) unless the series was there, at 0, before it."""
    for labels in label_sets:
        counter.labels(*labels)


class EngineMetrics:
    """Shard actors, the router, the coordinator and housekeeping."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self._reservations_by_outcome: dict[str, CounterChild] = {}
        self.reservations = Counter(
            "atp_reservations_total", "Reservation decisions and resolutions by outcome", ["outcome"], registry=r
        )
        # Read at each scrape: a shard held up (a write Redis does not answer, a pause, a maintenance turn)
        # sets nothing while calls pile up in its mailbox, and the alert on it must see them.
        self.mailbox_depth = Reading("atp_shard_mailbox_depth", "Messages waiting per shard", ["shard"], registry=r)
        self.batch_size = SizeHistogram(
            "atp_shard_batch_size", "Commands applied per group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=r,
        )
        self.append_failures = Counter(
            "atp_log_append_failures_total", "Log appends that failed (answered UNAVAILABLE), by why: "
            + ", ".join(APPEND_FAILURE_REASONS), ["reason"], registry=r)
        # At 0 from the start: the first refusals of a full Redis must show as a rise to the alert on them.
        zeroed(self.append_failures, *((reason,) for reason in APPEND_FAILURE_REASONS))
        self.shard_failures = Counter(
            "atp_shard_failures_total", "Shard actors that stopped working (a bug; the service restarts)", registry=r)
        self.internal_errors = Counter(
            "atp_internal_errors_total", "Commands that failed unexpectedly (a bug); nothing of them was applied",
            registry=r)
        self.shed = Counter("atp_shed_total", "Requests refused for overload (mailbox full, queue delay, loop lag)",
                            registry=r)
        self.recovery_seconds = Gauge("atp_recovery_seconds", "Duration of the last start-up recovery", registry=r)
        self.recovered_entries = Gauge("atp_recovery_entries", "Log entries replayed at start-up", registry=r)
        self.live_reservations = Gauge(
            "atp_live_reservations", "HELD or CONFIRMED reservations per shard", ["shard"], registry=r
        )
        self.remembered_reservations = Gauge(
            "atp_remembered_reservations", "Reservations a shard remembers: live, and resolved within retention",
            ["shard"], registry=r)
        self.oversold_units = Gauge(
            "atp_oversold_units", "Units promised (reserved + committed) beyond on hand, over all positions (Q5)",
            registry=r)
        self.clock = ClockMetrics(r)  # the clock promise (R3, R6): offset, groups' lead, retention
        self.orders_unsettled = Reading(
            "atp_orders_unsettled", "Orders spanning shards (a Redis Cluster, ownership = leases) whose saga stopped "
            "half-way, waiting to be driven on or being driven on by housekeeping", registry=r)
        self.positions = Gauge(
            "atp_positions", "Positions (SKU x location) a shard holds; bounded by max_positions_per_shard",
            ["shard"], registry=r)
        self.dedupe_entries = Gauge(
            "atp_dedupe_entries", "Fact identities a shard remembers for dedupe (E8) over the grace window; "
            "bounded by max_dedupe_entries_per_shard", ["shard"], registry=r)
        self.capacity_refusals = Counter(
            "atp_capacity_refusals_total", "Calls refused CAPACITY_REACHED at a bound, by that limit: a shard's "
            "on what it remembers (new Reserves; new facts quarantined at the dedupe bound) or holds (facts naming "
            "a new position quarantined, LoadCounts and SetSafetyStock refused), the service's on open "
            "ReserveStreams or watchers", ["limit"], registry=r)
        # At 0 from the start: at the bound every new Reserve of the shard (every new stream, every new
        # position) is refused until reservations end or retention forgets them (streams close), and no
        # other counter (atp_shed_total) sees it.
        zeroed(self.capacity_refusals, *((limit,) for limit in CAPACITY_LIMITS))
        self.order_sagas = Counter(
            "atp_order_sagas_total", "Saga runs of orders spanning shards on a Redis Cluster, by how they ended",
            ["outcome"], registry=r)
        zeroed(self.order_sagas, ("committed_nowhere",))  # its rate: orders found committed nowhere
        self.orders_committed_nowhere = Reading(
            "atp_orders_committed_nowhere", "CONFIRMED orders spanning shards whose part is another order's confirmed "
            "part of their id, kept: their units there committed nowhere (ATPOrderCommittedNowhere)", registry=r)

    def reservations_of(self, outcome: str) -> CounterChild:
        """The ``atp_reservations_total`` child of ``outcome``, found once (not a ``labels`` call per use)."""
        child = self._reservations_by_outcome.get(outcome)
        if child is None:
            child = self._reservations_by_outcome[outcome] = self.reservations.labels(outcome)
        return child


class StorageMetrics:
    """The log: group commit, settling appends in doubt, snapshots."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.pipeline_size = SizeHistogram(
            "atp_log_pipeline_entries", "Shard entries per Redis round trip",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=r,
        )
        self.append_seconds = Histogram(
            "atp_log_append_seconds", "Redis append round-trip time", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.settles = Counter(
            "atp_log_settles_total", "Appends in doubt settled after fencing, by what the log held",
            ["outcome"], registry=r,
        )
        zeroed(self.settles, ("landed",), ("not_landed",))
        self.snapshot_seconds = Histogram(
            "atp_snapshot_seconds", "Time to encode and store one shard snapshot",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10), registry=r,
        )
        self.snapshot_failures = Counter(
            "atp_snapshot_failures_total", "Shard snapshots that could not be stored (retried with backoff)",
            registry=r)
        self.snapshot_bytes = Gauge("atp_snapshot_bytes", "Size of the last snapshot per shard", ["shard"], registry=r)
        self.redis_restarts = Counter(
            "atp_embedded_redis_restarts_total", "Times the embedded redis-server was started again after it exited",
            registry=r)
        self.eviction_unsafe = Gauge(
            "atp_redis_eviction_policy_unsafe", "1 while a Redis node's maxmemory-policy may evict the service's keys "
            "(read again every owner_check_s)", ["node"], registry=r)


class IntakeMetrics:
    """Facts from RecordEvents and the input streams."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.facts = Counter(
            "atp_facts_total", "Facts by origin (grpc or input stream), kind and outcome",
            ["origin", "kind", "outcome"], registry=r,
        )
        # At 0 from the start for the outcome ATPFactsQuarantined reads, per origin and kind (only COUNT
        # is loaded): a day-old upload's first quarantined facts would only create the series, unseen.
        zeroed(self.facts, ("load", "COUNT", "quarantined"),
               *((origin, kind.name, "quarantined") for origin in FACT_ORIGINS for kind in FactKind))
        self.fact_lag = Histogram(
            "atp_fact_lag_seconds", "now - event_time of applied facts",
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 6 * 3600, 24 * 3600), registry=r,
        )
        self.shipments_unfulfilled = Counter(
            "atp_shipments_unfulfilled_total", "SHIPMENT facts naming a reservation whose units left on_hand but "
            "fulfilled nothing of it, by why (reservation._unfulfilled.Unfulfilled)", ["origin", "reason"], registry=r,
        )
        self.dead_lettered = Counter(
            "atp_dead_lettered_total", "Input-stream entries moved to the dead-letter stream", ["stream"], registry=r
        )
        self.ingest_given_up = Counter(
            "atp_ingest_given_up_total", "Input-stream entries dead-lettered as their facts were refused for a reason "
            "that does not pass with time (the reason) at ingest_max_deliveries deliveries", ["stream", "reason"],
            registry=r,
        )
        self.ingest_pending = Gauge("atp_ingest_pending", "Entries delivered to the consumer group but not yet "
                                    "acknowledged", ["stream"], registry=r)
        self.ingest_lag = Gauge(
            "atp_ingest_lag", "Entries of the stream the consumer group has not read yet (XINFO GROUPS lag; NaN: "
            "Redis cannot tell)", ["stream"], registry=r)
        self.ingest_consumers = Gauge(
            "atp_ingest_consumers", "Consumers of the input stream's consumer group (XINFO GROUPS), a process renamed "
            "or gone that no sweep removes included: remove those by hand", ["stream"], registry=r,
        )
        self.ingest_claimed = Counter("atp_ingest_claimed_total", "Stale pending entries claimed from other consumers",
                                      registry=r)
        self.ingest_trimmed_unread = Counter(
            "atp_ingest_trimmed_unread_total", "Input-stream entries trimmed from their stream before the consumer "
            "group read them: their facts were never applied", ["stream"], registry=r
        )
        self.ingest_refused_forgotten = Counter(
            "atp_ingest_refused_forgotten_total", "Input-stream entries refused (E7, REFUSED_REPEATEDLY) forgotten as "
            "refused in Redis past ingest_refused_kept per stream: judged again if a group made again delivers them",
            ["stream"], registry=r)
        self.ingest_consumers_removed = Counter(
            "atp_ingest_consumers_removed_total", "Consumers of the input streams' group removed, their process gone "
            "for good (leased: no live process at their address, nothing pending, idle claim_idle_ms)", registry=r
        )
        self.ingest_quarantine_runs_redrawn = Counter(
            "atp_ingest_quarantine_runs_redrawn_total", "Quarantine runs this process drew again (leased: swept while "
            "it ran), its quarantine writes refused until then", registry=r
        )
        self.ingest_read_failures = Counter(
            "atp_ingest_read_failures_total", "Reads of the input streams that failed (Redis not answering, a "
            "consumer group gone) and were tried again after a pause", registry=r
        )
        self.ingest_read_refused = Gauge(
            "atp_ingest_read_refused", "1 while the reads of the input streams are refused for a reason waiting does "
            "not cure (a key of another type, the Redis user's ACL), ingest_read_refusals_max times or more",
            registry=r)


class ChannelMetrics:
    """The channel desk: curation, feeds, their writes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self._channels: set[str] = set()
        """The channels exported (``export_channels``): the estate's now."""
        self.delay = Histogram(
            "atp_channel_publish_delay_seconds",
            "Durable here (the change behind a value) -> published, by channel and kind",
            ["channel", "kind"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.published = Counter(
            "atp_channel_updates_published_total", "Channel updates written, by kind (stockout, baseline, change)",
            ["channel", "kind"], registry=r)
        self.coalesced = Counter(
            "atp_channel_coalesced_total", "Curated values replaced by a newer one before being published",
            ["channel"], registry=r)
        self.throttled = Counter(
            "atp_channel_throttled_total", "Changes that had to wait for their key's throttle interval (C2)",
            ["channel"], registry=r)
        self.pending = Gauge(
            "atp_channel_pending", "Changes waiting (throttle interval or rate limit) per channel", ["channel"],
            registry=r)
        self.oldest_wait = Gauge(
            "atp_channel_oldest_wait_seconds", "How long the oldest change past its throttle interval has waited "
            "for the rate limit, per channel", ["channel"], registry=r)
        self.overdue = Counter(
            "atp_channel_overdue_total", "Changes published after waiting past their throttle interval longer than "
            "the channel's max_wait_ms (taken before the velocity order, C2)", ["channel"], registry=r)
        self.write_failures = Counter(
            "atp_channel_write_failures_total", "Channel stream writes that failed (retried), and each failed "
            "fence of their settling, by why: " + ", ".join(APPEND_FAILURE_REASONS), ["reason"], registry=r)
        # At 0 from the start, as the log's appends: a full Redis's first refusal shows as a rise.
        zeroed(self.write_failures, *((reason,) for reason in APPEND_FAILURE_REASONS))
        self.settles = Counter(
            "atp_channel_settles_total", "Failed channel writes settled after fencing, by what the streams held "
            "(landed, not_landed; refused: the write script refused it, nothing landed)", ["outcome"], registry=r)
        zeroed(self.settles, ("landed",), ("not_landed",), ("refused",))
        self.published_again = Counter(
            "atp_channel_keys_published_again_total", "Keys offered again at a new version on a publisher's word that "
            "it delivered them at versions Redis has since lost (C4)", ["channel"], registry=r)
        self.restamps_unread = Counter(
            "atp_channel_restamps_unread_total", "Looks at a channel's restamp hash Redis refused (another type than a "
            "hash): the keys publishers name there are not published again", ["channel"], registry=r)
        self.relinks = Counter("atp_channel_relinks_total", "Times the channel desk read every channel again from "
                               "what Redis holds, Redis having lost versions it published (StreamLost)", registry=r)
        self.curated_skus = Counter(
            "atp_channel_curated_skus_total", "SKUs re-curated (all channels) after a durable change", registry=r)
        self.curation_seconds = Histogram("atp_channel_curation_seconds", "Time to re-curate the SKUs changed "
                                          "since the last round", buckets=_LATENCY_BUCKETS, registry=r)

    def feed_published(self, channel: str, coalesced: int, throttled: int, overdue: int) -> None:
        """A feed's counts since its last write, once it was written."""
        self.coalesced.labels(channel).inc(coalesced)
        self.throttled.labels(channel).inc(throttled)
        self.overdue.labels(channel).inc(overdue)

    def write_failed(self, reason: str) -> None:
        """A channel write, or a fence of its settling, failed for ``reason`` (``APPEND_FAILURE_REASONS``)."""
        self.write_failures.labels(reason).inc()

    def export_channels(self, names: Iterable[str]) -> None:
        """The estate's channels, at the start and at each reload: each one's update counts exported at 0 from then
        (``zeroed``): an alert on their ``increase()`` (ATPChannelWithoutPublisher) would miss a channel's first
        updates. A channel's feed gauges go with it: kept, a channel a reload took out said its last backlog for
        good (ATPChannelChangesOverdue firing for a channel that no longer is)."""
        now = set(names)
        zeroed(self.published, *((name, kind) for name in now for kind in ("stockout", "baseline", "change")))
        for gone in self._channels - now:
            self.pending.remove(gone)
            self.oldest_wait.remove(gone)
        self._channels = now

class EdgeMetrics:
    """The gRPC face. ``shed``, ``facts`` and ``capacity_refusals`` are the engine's and the intake's
    own counters: a call refused at the door for loop lag is shed like one refused by a full mailbox,
    an invalid fact in a RecordEvents is counted with the facts, and a stream refused at its bound
    with the Reserves refused at a shard's."""

    def __init__(self, registry: CollectorRegistry | None = None, shed: Counter | None = None,
                 facts: Counter | None = None, capacity_refusals: Counter | None = None) -> None:
        r = registry or CollectorRegistry()
        self.rpc_seconds = Histogram(
            "atp_rpc_duration_seconds", "gRPC handling time by method and status code",
            ["method", "code"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.auth_denied = Counter(
            "atp_auth_denied_total", "Calls refused by authentication/authorisation, by status code", ["code"],
            registry=r,
        )
        self.bad_requests = Counter(
            "atp_bad_requests_total", "Calls refused INVALID_ARGUMENT because their bytes are not a valid request "
            "message (truncated, bad UTF-8), by method", ["method"], registry=r,
        )
        self.streams_stalled = Counter(
            "atp_streams_stalled_total", "Server streams ended because a reply waited stream_stall_s to be "
            "written (their caller stopped reading), by method", ["method"], registry=r,
        )
        self.streams_cut_at_stop = Counter(
            "atp_streams_cut_at_stop_total", "Calls a graceful stop cut once every other call had ended: no write of "
            "theirs completed for shutdown_stall_s (their caller stopped reading), by method", ["method"], registry=r,
        )
        self.loop_lag = Gauge("atp_event_loop_lag_seconds", "How late the event loop woke its lag timer "
                              "(every 20 ms while calls arrive or it runs late, every 250 ms when idle)", registry=r)
        self.stream_reads_paused = Counter(
            "atp_stream_reads_paused_seconds_total", "Seconds ReserveStream calls waited, before reading their "
            "next (or first) batch, and new WatchAvailability calls before their snapshot, for the event loop to be "
            "on time again (overload: left in gRPC flow control)", registry=r)
        self.calls_in_progress = Reading(
            "atp_calls_in_progress", "Calls the service is handling now (an open stream counts once)", registry=r)
        self.forwarded = Counter(
            "atp_forwarded_calls_total", "Calls for a shard group another service process owns, by method and "
            "outcome: forwarded to the owner (ok, error: the owner's refusal or no answer), redirected, or located "
            "(a reservation held at another process, answered by it once every other was asked, its refusal too; "
            "error where no process answered for it)", ["method", "outcome"], registry=r,
        )
        self.shed = shed or EngineMetrics().shed
        self.facts = facts or IntakeMetrics().facts
        self.capacity_refusals = capacity_refusals or EngineMetrics().capacity_refusals
        """The engine's: streams refused at ``max_reserve_streams`` or ``max_watchers`` are counted
        by that limit, where the capacity alert reads them (not only in ``atp_rpc_duration_seconds``)."""


class MembershipMetrics:
    """The shard groups this process owns when several share a keyspace (``ownership = leases``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.groups_owned = Gauge("atp_groups_owned", "Shard groups this process owns now", registry=r)
        self.members = Gauge("atp_processes_live", "Service processes sharing the keyspace, as last read", registry=r)
        self.not_taking = Gauge("atp_processes_not_taking", "Live processes this one counts out of the shares: "
                                "they left a group free, taking none", registry=r)
        self.taken = Counter("atp_groups_taken_total", "Shard groups taken by this process (after start, a "
                             "takeover or a hand-over)", registry=r)
        self.renewal_failures = Counter(
            "atp_lease_renewal_failures_total", "Renewals that left the membership or a lease unrenewed (Redis slow "
            "or away); each tried again soon. Past 80% of a lease without one, the groups are not answered here",
            registry=r)
        self.given = Counter("atp_groups_given_up_total", "Shard groups this process stopped owning, by why",
                             ["why"], registry=r)
        zeroed(self.given, ("handed_over",), ("lease",), ("fenced",), ("failed",))
        self.take_seconds = Histogram(
            "atp_group_take_seconds", "From taking a group's lease to serving it (its recovery)",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=r,
        )
        self.groups_free = Gauge(
            "atp_groups_free", "Shard groups no process held the lease of at this process's last balance: between "
            "owners for a balance period or so; past that served by no process (atp_group_recoveries_failed_total "
            "says why)", registry=r)
        self.recoveries_failed = Counter(
            "atp_group_recoveries_failed_total", "Shard groups taken whose recovery failed, given back, by why: "
            + ", ".join(RECOVERY_FAILURE_REASONS), ["reason"], registry=r)
        # At 0 from the start: a group refused for its data is refused at every taking, the first one included.
        zeroed(self.recoveries_failed, *((reason,) for reason in RECOVERY_FAILURE_REASONS))


class Metrics:
    """Every group of one service, on one registry (what its metrics endpoint serves), with the
    process's own metrics and ``atp_build_info``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        process_collectors(self.registry)
        self.build = build_info("atp_build_info", self.registry, {"grpc": "grpcio", "redis_py": "redis"})
        self.engine = EngineMetrics(self.registry)
        self.storage = StorageMetrics(self.registry)
        self.intake = IntakeMetrics(self.registry)
        self.channels = ChannelMetrics(self.registry)
        self.membership = MembershipMetrics(self.registry)
        self.edge = EdgeMetrics(self.registry, shed=self.engine.shed, facts=self.intake.facts,
                                capacity_refusals=self.engine.capacity_refusals)
