"""The first part of ``ServiceConfig``'s settings (config.py), in their order: where the service listens
and what it owns, its Redis, how much work it takes on and how it commits it, its snapshots, the bounds
of its gRPC calls and its stop. Each field is a setting (``config_settings``), its docstring its help.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServingFields:
    """The settings ``ServiceConfig`` declares first: its fields follow these (a dataclass's order)."""

    host: str = "127.0.0.1"
    """Address the gRPC server binds to (use 0.0.0.0 inside a container)."""

    port: int = 50051
    """gRPC port; 0 picks a free one (printed at start)."""

    metrics_host: str = "127.0.0.1"
    """Prometheus endpoint address; loopback unless deliberately exposed."""

    metrics_port: int = 9464
    """Prometheus endpoint port; 0 picks a free one, -1 disables it."""

    shards: int = 16
    """Number of shard actors. SKUs are placed by a stable hash, so changing it needs an empty log."""

    redis_url: str | None = None
    """Redis holding the logs and snapshots. Unset: start a private embedded redis-server."""

    redis_cluster: bool = False
    """``redis_url`` names a node of a Redis Cluster (the others are found from it): each shard's
    keys share one hash slot, a group commit is one script call per shard pipelined per primary,
    and an order whose lines span shards is decided by a saga of one-shard steps (R2). The input
    streams, ``dead_letter_stream`` and ``quarantine_stream`` must then share one hash tag (such as
    ``atp:{in}:pos``): an entry is dead-lettered and acknowledged in one transaction."""

    ownership: str = "keyspace"
    """``keyspace``: this process owns every shard group of ``key_prefix`` (a newer one replaces it).
    ``leases``: several processes share the keyspace, each owning a share of the groups under a
    lease (``lease_ms``), taking over those of a process that stops or dies, and forwarding calls
    for groups another owns. No channel feeds in this mode yet."""

    advertise_address: str = ""
    """``host:port`` where other processes and routing clients reach this one (empty: host:port); IPv6 in brackets."""

    lease_ms: int = 5000
    """How long a group stays this process's unrenewed (``leases``; renewed every third of it). Safety
    never depends on it: a group taken over fences every write of its previous owner."""

    balance_ms: int = 0
    """How often a process takes free groups (a stopped one's) or hands one over (``leases``; 0, at most lease_ms/3)."""

    data_dir: Path = Path("var")
    """Where the embedded redis-server keeps its append-only file."""

    durability: str = "everysec"
    """Embedded Redis fsync policy: ``everysec`` (a host crash may lose up to 1 s) or ``always``."""

    redis_load_timeout_s: float = 600.0
    """How long the embedded redis-server may take to load its append-only file at start (a large
    estate's, from a cold disk), and again after a restart; its progress is logged meanwhile. Past
    it the start fails (exit status 2), or the restart (5)."""

    redis_restarts: int = 3
    """How often the embedded redis-server is started again after it exits on its own (killed for
    memory, crashed) within 10 minutes; at the next exit the service stops with exit status 5."""

    key_prefix: str = "atp:"
    """Prefix of every Redis key the service writes; no ``{`` or ``}`` (each key's hash tag is its group's)."""

    mailbox_size: int = 10_000
    """Messages a shard may have waiting; beyond it callers get RESOURCE_EXHAUSTED."""

    max_loop_lag_ms: int = 250
    """Shed load at the door: while the event loop runs this late, new calls get RESOURCE_EXHAUSTED (0: off)."""

    max_pending_calls: int = 512
    """Calls that gRPC itself may hold for the service before it takes them up: the queue ahead of everything else,
    which fills when the service runs at capacity. Past half of it new calls are refused more and more often, past all
    of it always — at once, by gRPC core, which answers them CANCELLED or RESOURCE_EXHAUSTED (see ``http2_transport``).
    Keep it above the concurrency of normal bursts (refusals start past half: 200 clients calling at once must all get
    in) and below what callers' deadlines allow: at ~2,000 calls/s, 512 waiting is about 0.25 s of work. Roughly:
    capacity (calls/s) x the shortest client deadline (s) / 2. At half a CPU (~460-690 calls/s) 512 is 0.75-1.1 s and
    some 1 s deadlines ran out; 256 kept them all (benchmarks/overload.py --service-cpus 0.5 --max-pending-calls N)."""

    http2_transport: str = "classic"
    """gRPC core's HTTP/2 server transport, which decides what a call refused at the door (past
    ``max_pending_calls``) is told: ``classic`` (chttp2) resets it — the client sees CANCELLED;
    ``promise`` (grpcio's experimental ``ph2_server``) answers RESOURCE_EXHAUSTED, at no measurable
    throughput cost (benchmarks/RESULTS.md); not the default while grpcio calls it an experiment, nor where callers
    may write ahead (it holds to no ``stream_window_bytes``). ``atp-service serve`` re-executes itself to match."""

    max_queue_delay_ms: int = 1000
    """Shed load: while a shard's queued work has waited longer than this, new work is refused
    with RESOURCE_EXHAUSTED at once instead of joining a queue it would wait behind."""

    batch_max: int = 512
    """Most commands a shard applies and group-commits in one log entry."""

    pipeline_depth: int = 4
    """Log entries one shard may have in flight at once (it decides the next batch meanwhile)."""

    pipeline_max: int = 64
    """Most shard log entries sent to Redis in one pipelined round trip."""

    commit_delay_ms: float = 2.0
    """While the log is busy (see ``commit_delay_min_rate``) a group commit waits up to this long for more entries
    before it goes to Redis: fewer, fuller Redis calls, so less CPU per call, for at most this much added latency.
    It goes as soon as the entries the measured rate brings in this long (at least 2) are waiting: at 1,000
    entries/s, with the second. 0 sends every group commit at once."""

    commit_delay_min_rate: int = 500
    """Log entries per second (all shards) from which the log counts as busy. Below it a commit goes out at
    once: a wait would mostly find no company. The default is 1 / the default ``commit_delay_ms``."""

    snapshot_every_entries: int = 20_000
    """A shard snapshots after this many log entries (and the log is trimmed behind it)."""

    snapshot_interval_s: float = 300.0
    """...or after this many seconds with at least one new entry."""

    snapshot_retry_max_s: float = 30.0
    """After a failed snapshot a shard waits 1 s (at most this), then twice as long after each
    further failure, up to this, before it builds the next: a snapshot costs time in proportion to
    the shard's state, and during a Redis outage a try on every maintenance pass took half a core."""

    snapshot_write_mb_per_s: float = 20.0
    """A snapshot's write to Redis may take its size at this rate, on top of ``redis_timeout_s``. A shard's snapshot
    of 1.9 M positions (~136 MB) took 1.7 s to store with ``appendfsync always`` on a 2-core VM; held to an append's
    timeout, a slower disk made it time out, land all the same, and be written again at every retry."""

    snapshot_part_bytes: int = 1 << 20
    """A snapshot above this size is written to Redis in parts of this size, each its own call, and
    moved into place whole by the last, so that other shards' appends pass between them. Redis runs
    one command at a time: a large snapshot stored in one call holds every shard's appends behind
    it for as long as it takes (``benchmarks/snapshot_write.py``; figures in benchmarks/RESULTS.md)."""

    snapshot_piece_bytes: int = 128 << 20
    """A larger snapshot is stored in several Redis keys of at most this size: Redis refuses a string past 512 MB."""

    maintenance_interval_ms: int = 100
    """How often expiry, retention eviction and snapshot checks run."""

    owner_check_s: float = 1.0
    """How often the service checks that it still owns its Redis keyspace (a newer instance on the
    same ``key_prefix`` takes it over; every log write checks too), that each shard's log still reaches
    the entries it made durable (Redis restarted from older data: an instance that only reads would serve
    stale numbers until its next write), and each Redis node's maxmemory-policy (one CONFIG GET a node)."""

    redis_timeout_s: float = 2.0
    """Socket timeout of Redis calls; an append past it is answered UNAVAILABLE."""

    redis_wait_replicas: int = 0
    """Replicas of the Redis primary that must hold a log or channel feed write before it is acknowledged (Redis
    ``WAIT`` on the connection that wrote it). 0: the primary's answer is enough, and a failover to a replica that had
    not received the last writes loses them (the service then refuses to start on the shortened log rather than serve
    from it). 1 or more closes that window for a failover to any replica that confirmed; a write not confirmed in
    ``redis_wait_timeout_ms`` is answered as in doubt (UNAVAILABLE, OUTCOME_UNKNOWN) and settled like a timeout."""

    redis_wait_timeout_ms: int = 500
    """How long a write waits for ``redis_wait_replicas`` confirmations (keep it under ``redis_timeout_s``)."""

    max_message_bytes: int = 4 * 1024 * 1024
    """Largest gRPC message accepted; larger ones are refused by gRPC itself."""

    max_stream_inflight: int = 8
    """Batches one ReserveStream may have in progress at once (flow control)."""

    stream_window_bytes: int = 64 * 1024
    """Bytes of a call's request that gRPC takes from its caller before the service reads them (the HTTP/2 stream
    window, fixed): a ReserveStream's batches past those being decided wait on the caller's side. Left to itself,
    gRPC grows the window with the bandwidth, to 4 MiB and more a stream, all unread (``classic`` only: see below)."""

    max_reserve_streams: int = 1024
    """ReserveStream calls open at once (one cancelled counts until its batches are decided); more are refused
    RESOURCE_EXHAUSTED. Each holds ``max_stream_inflight`` batches and answers at most: this bounds them all;
    streams the other processes open on behalf of theirs (``ownership = leases``) count too."""

    stream_stall_s: float = 30.0
    """How long one reply of a server stream (ReserveStream, WatchAvailability, Health.Watch, reflection) may
    wait to be written while its caller does not read; past it the stream ends (ReserveStream OUTCOME_UNKNOWN,
    the others CAPACITY_REACHED, metadata ``limit``) and frees its place. 0: never (a stalled caller keeps it)."""

    max_open_service_streams: int = 4096
    """Health.Watch and reflection streams (open to any caller, no token) open at once; more are refused."""

    shutdown_grace_s: float = 5.0
    """How long in-flight RPCs may finish on shutdown before they are cancelled."""

    shutdown_stall_s: float = 2.0
    """On shutdown, how long a call may wait on one write that does not complete (its caller not reading) before it
    counts as stalled: once every other call has ended, the stalled ones are cut (UNAVAILABLE) instead of holding the
    stop for ``shutdown_grace_s``. A call the service is still working on is never stalled. 0: none is waited for."""
