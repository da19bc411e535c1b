"""The slices of the service configuration each component is given (a component sees only the
settings it uses). Each field is documented once, on the ``ServiceConfig`` field of the same name (a
test checks that every slice field is one); a slice that holds another names it after its property."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeVar

from reservation import Limits


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """When a shard snapshots (``storage.Checkpoints``)."""

    snapshot_every_entries: int
    snapshot_interval_s: float
    snapshot_retry_max_s: float
    snapshot_write_mb_per_s: float
    snapshot_part_bytes: int
    snapshot_piece_bytes: int = 128 << 20


@dataclass(frozen=True, slots=True)
class ShardSettings:
    """What one shard actor is told: its mailbox, batches, pipeline and snapshots."""

    mailbox_size: int
    max_queue_delay_ms: int
    batch_max: int
    pipeline_depth: int
    redis_timeout_s: float
    limits: Limits
    snapshot_policy: SnapshotPolicy


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """What the engine is told: how many shards, housekeeping, and each shard's settings."""

    shards: int
    maintenance_interval_ms: int
    limits: Limits
    shard_settings: ShardSettings
    lease_ms: int = 5000  # a group's lease (leases): an order waits past its TTL for a silent part twice it at least


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """What the reader of the POS/WMS input streams is told."""

    input_streams: tuple[str, ...]
    consumer_group: str
    consumer_name: str
    ingest_count: int
    ingest_inflight: int
    ingest_block_ms: int
    claim_idle_ms: int
    ingest_max_deliveries: int
    ingest_refused_kept: int
    ingest_read_refusals_max: int
    ingest_max_entry_bytes: int
    dead_letter_stream: str
    side_stream_maxlen: int
    limits: Limits


PUBLISH_WRITES_PER_ROUND = 16
"""Most writes (each at most ``publish_batch_max`` a feed) a channel desk round's last publishing makes
while feeds fill their batches, and most writes of what is due (stock-outs first, C2) between its slices; its
two other publishings of stock-outs write once each. ~16,000 updates a channel a round keep a burst's changes
moving, while a larger backlog (a new channel's baseline) goes out over rounds, curation running between."""

CELLS_PER_OFFER = 3
"""Curated cells one offer to a feed counts as when a round offers its changes between turns of the event loop
(``curate_slice_cells // CELLS_PER_OFFER`` offers a slice). An offer is a Python step per changed key, several times a
numpy cell's cost: sliced by ``curate_slice_cells`` itself, a slice held the loop 25-45 ms under a burst, and each hop
of the desk's write on its way waited for one (a stock-out behind it: p99 ~120 ms in ``benchmarks/publish.py``). Smaller
slices give the loop to ingest more often and to the desk less: 10 gave stock-outs p99 20 ms but ordinary changes
+350 ms at p50; 3 gives 44 ms and +80 ms (ordinary changes' p99 1,030 ms, was 1,300)."""


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """What the channel desk is told, beyond the estate."""

    publish_batch_max: int
    velocity_half_life_s: float
    curate_slice_cells: int


Slice = TypeVar("Slice")


def slice_of(kind: type[Slice], config: Any) -> Slice:
    """The slice ``kind`` of a ``ServiceConfig``."""
    return kind(**{f.name: getattr(config, f.name) for f in fields(kind)})  # type: ignore[arg-type]
