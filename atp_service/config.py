"""Service configuration: one frozen dataclass, filled from defaults, ``ATP_*`` variables and flags
(config_settings.py), and the slices of it each component is given (config_slices.py). Its first
settings are declared in config_serving.py (``ServingFields``), the rest here."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atp_service import config_settings
from atp_service.config_serving import ServingFields
from atp_service.config_slices import (
    ChannelSettings,
    EngineSettings,
    IngestSettings,
    ShardSettings,
    SnapshotPolicy,
    slice_of,
)
from atp_service.config_values import DURABILITY_MODES, TRANSPORTS, check_bounds, check_choices, check_redis, check_tls
from reservation import Limits

__all__ = ["DURABILITY_MODES", "TRANSPORTS", "ChannelSettings", "EngineSettings", "IngestSettings", "ServiceConfig",
           "ShardSettings", "SnapshotPolicy"]


@dataclass(frozen=True)
class ServiceConfig(ServingFields):
    """Everything ``atp-service serve`` can be told. Each field (``ServingFields``' first, in
    config_serving.py), and each field of ``limits``, is a setting with an ``ATP_<NAME>`` variable and a
    ``--<name>`` flag (default < variable < flag)."""

    event_loop: str = "uvloop"
    """``uvloop`` or ``asyncio``: the event loop the server runs on."""

    log_level: str = "INFO"
    """Least severe log lines written: ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``."""

    log_format: str = "text"
    """``text``: one line per record for people; ``json``: one JSON object per line (time, level,
    logger, message and the record's fields) for a log pipeline."""

    tracing_endpoint: str = ""
    """OTLP/HTTP traces endpoint of a collector (such as ``http://otel-collector:4318/v1/traces``):
    sampled OpenTelemetry traces of the calls and the shard/log path. Empty: no tracing. Needs the
    ``tracing`` extra; the exporter's other settings (headers, certificates) are OpenTelemetry's own
    ``OTEL_EXPORTER_OTLP_TRACES_*`` variables."""

    tracing_sample_ratio: float = 0.01
    """Share of traces sampled (by trace id, 0 to 1); a caller's sampled ``traceparent`` is followed whatever it is."""

    tracing_export_timeout_s: float = 5.0
    """Seconds one export of spans may take; a stop waits one export for those queued, then drops them."""

    gc_thresholds: tuple[int, int, int] = (5_000, 10, 1000)
    """Python GC thresholds of the serving process (CPython's default is 700, 10, 10). A young collection's pause grows
    with the first number (grpc.aio leaves some cyclic garbage per call: at 100,000, 75-100 ms pauses); the last keeps
    full collections rare (at 10, ingest of many long-lived facts ran at a third of its rate; benchmarks/ingest.py)."""

    malloc_mmap_threshold: int = 256 * 1024
    """Bytes from which the C allocator (glibc) maps a block on its own and returns it to the system when freed,
    instead of keeping it in a heap arena (0: the allocator's own, moving threshold). Bulk loads and snapshots
    handle blocks of megabytes: with the moving threshold a 3 M-position load left ~15 % more resident memory."""

    numpy_hugepages: bool = False
    """Whether numpy asks the kernel for huge pages for its large arrays (madvise). Off: unwritten
    room to grow became resident 2 MiB at a time (a 1.9 M-position shard: 150 against 135 MiB)."""

    input_streams: tuple[str, ...] = ("atp:in:pos", "atp:in:wms")
    """Redis streams POS/WMS integrations append facts to (comma-separated in ATP_INPUT_STREAMS; empty: off)."""

    consumer_group: str = "atp"
    """Consumer group the service reads the input streams with: 1 to 200 printable characters, no ``:`` (its Redis
    keys join it and the consumer with ``:``)."""

    consumer_name: str = "atp-1"
    """Consumer name (leased: ``<it>@<advertised address>``), 1 to 200 printable characters, not ending with
    ``:answered`` unless leased; keep it stable: a restart re-reads its pending entries."""

    ingest_count: int = 1000
    """Most entries read per stream per XREADGROUP without channel feeds: large reads for throughput (ingest.py)."""

    ingest_count_publishing: int = 150
    """Most entries read per stream per XREADGROUP when channel feeds are configured. Ingest then gets less done per
    turn of the event loop, and the turns stay short, so the channel desk — which shares the loop — publishes a
    stock-out within tens of ms of it becoming durable (C2; benchmarks/publish.py) instead of after thousands of facts
    read before it. Raise it for more ingest throughput at the cost of that delay."""

    ingest_inflight: int = 3
    """Batches of input-stream entries being applied at once while the next one is read."""

    ingest_block_ms: int = 500
    """How long one XREADGROUP waits for new entries."""

    claim_idle_ms: int = 60_000
    """Pending entries idle this long (a dead consumer's) are claimed with XAUTOCLAIM."""

    ingest_max_deliveries: int = 20
    """Deliveries after which an input entry whose fact is refused for a reason that does not pass with time
    (docs/OPERATIONS.md "Input streams") is dead-lettered (REFUSED_REPEATEDLY), not read again for ever (0: never)."""

    ingest_read_refusals_max: int = 10
    """Reads of the input streams Redis refuses for a reason waiting does not cure (a key of another type, the Redis
    user's login or ACL: WRONGTYPE, WRONGPASS, NOPERM), with none succeeding between, after which the reader says so
    as an error (``ingest_read_refused``, ``atp_ingest_read_refused`` 1); it reads again at growing waits up to 2 s
    meanwhile. Passes over its own pending entries (tried every 1 s at most) and claims of other consumers' ones
    (every half ``claim_idle_ms``) are counted apart, each against this bound."""

    ingest_refused_kept: int = 10_000
    """Most input entries refused as stamped in the future (E7) kept in Redis as refused per input stream, while the
    stream holds them (``intake/refused_kept.py``): past it the oldest is forgotten, counted
    (``atp_ingest_refused_forgotten_total``), and judged again if a group made again delivers it again
    (0: none kept)."""

    ingest_max_entry_bytes: int = 16_384
    """Most bytes an input-stream entry may have, its fields' names and values together, and most names and
    values (empty ones count no bytes): a larger one is dead-lettered (LIMIT_EXCEEDED) with its fields cut
    short, not copied whole into the dead-letter stream. Checked once read: it bounds no read's memory (one holds up
    to ingest_count entries a stream, each as large as its producer wrote it)."""

    dead_letter_stream: str = "atp:dlq"
    """Where undecodable or invalid input entries go, with the reason and their original fields."""

    quarantine_stream: str = "atp:quarantine"
    """Where late (E6) and conflicting (E8) facts go, with their reason. No stream (input, dead-letter, quarantine)
    is named as a key kept beside another: ``<input>:made-again:…``, ``<input>:trimmed-unread:…``,
    ``<quarantine>:written…``."""

    side_stream_maxlen: int = 1_000_000
    """Approximate length the dead-letter and quarantine streams are trimmed to."""

    estate: Path | None = None
    """Estate and channel TOML (locations, groups, channels). Unset: the demo estate in demo mode, else no channels."""

    publish_batch_max: int = 1000
    """Most channel updates one feed writes in one script call (a round writes again while one is full)."""

    velocity_half_life_s: float = 300.0
    """Half-life of the recent sales velocity that orders ordinary channel updates."""

    curate_slice_cells: int = 20_000
    """Cells (a SKU at one of a channel's locations) the channel desk curates between turns of the event loop."""

    max_watchers: int = 256
    """WatchAvailability streams open at once; more are refused with RESOURCE_EXHAUSTED."""

    max_watch_snapshot_keys: int = 10_000_000
    """Keys held by WatchAvailability snapshots being sent (~65 B each: benchmarks/RESULTS.md); past it, refused
    unless the only one."""

    watch_batch: int = 500
    """Updates sent per WatchAvailability message (snapshot chunks and changes), at most: fewer where they would
    pass max_message_bytes."""

    auth: str = "auto"
    """``on``: every call needs a bearer token from ``callers_file``; ``off``: no checks (a trusted
    network only); ``auto``: off in demo mode, on otherwise."""

    callers_file: Path | None = None
    """TOML of callers: name, roles, SHA-256 of the token (``atpctl token new`` makes entries)."""

    tls_cert: Path | None = None
    """Server certificate (PEM). With ``tls_key``: gRPC over TLS only."""

    tls_key: Path | None = None
    """Server private key (PEM)."""

    tls_client_ca: Path | None = None
    """CA (PEM) that client certificates must be signed by: mutual TLS. Needs ``tls_cert``."""

    peer_tls_ca: Path | None = None
    """CA (PEM) the other processes' certificates are checked with when calls go to them
    (``ownership = leases`` with TLS; unset: ``tls_client_ca``, else ``tls_cert`` itself). Needs ``tls_cert``."""

    peer_token_file: Path | None = None
    """File with the bearer token sent to the other processes for order steps (role ``peer``)."""

    demo: bool = True
    """Load the demo estate (302 locations, ~1,000 SKUs) when the log is empty."""

    limits: Limits = field(default_factory=Limits)
    """Input and memory bounds (see ``reservation.Limits``)."""

    def __post_init__(self) -> None:
        check_choices(self)
        if not 0.0 <= self.tracing_sample_ratio <= 1.0:
            raise ValueError(f"tracing_sample_ratio: must be within [0, 1], got {self.tracing_sample_ratio}")
        check_tls(self)
        if not 0 < self.redis_load_timeout_s <= 86_400:
            raise ValueError(f"redis_load_timeout_s: must be within (0, 86400], got {self.redis_load_timeout_s}")
        check_redis(self)
        check_bounds(self)

    @property
    def advertised(self) -> str:
        """Where the other processes reach this one (``advertise_address``, else ``host:port``)."""
        return self.advertise_address or f"{self.host}:{self.port}"

    @property
    def auth_on(self) -> bool:
        return self.auth == "on" or (self.auth == "auto" and not self.demo)

    @property
    def engine_settings(self) -> EngineSettings:
        return slice_of(EngineSettings, self)

    @property
    def shard_settings(self) -> ShardSettings:
        return slice_of(ShardSettings, self)

    @property
    def snapshot_policy(self) -> SnapshotPolicy:
        return slice_of(SnapshotPolicy, self)

    @property
    def ingest_settings(self) -> IngestSettings:
        return slice_of(IngestSettings, self)

    @property
    def channel_settings(self) -> ChannelSettings:
        return slice_of(ChannelSettings, self)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ServiceConfig:
        """Defaults, then ``ATP_*`` variables (``os.environ`` unless given), then explicit
        overrides (flags; None: not given). An ``ATP_*`` variable that is no setting is refused."""
        return cls.resolve(env, **overrides)[0]

    @classmethod
    def resolve(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> tuple[ServiceConfig, dict[str, str]]:
        """``from_env``, and where each setting's value came from (``default``, ``env ATP_X``, ``flag --x``)."""
        flags = {name: value for name, value in overrides.items() if value is not None}
        return config_settings.resolve(cls, os.environ if env is None else env, flags)


config_settings.flat_names(ServiceConfig)  # a field of ``limits`` named like a setting would make one variable mean two
