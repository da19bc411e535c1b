"""The durable log: one Redis stream per shard, group-committed, plus snapshots.

Entry ids are chosen by the service (``<seq>-0``, seq counting up per shard), so
an append whose answer was lost can be settled by reading the stream's last id,
and a repeated append is refused by Redis instead of being logged twice.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError, ResponseError

from atp_service.metrics import StorageMetrics
from atp_service.storage.append_resp import AppendPacker
from atp_service.storage.batches import BatchCommit
from atp_service.storage.keys import CHANNELS, Keyspace
from atp_service.storage.log_reads import LogReads
from atp_service.storage.nodes import Call, Nodes, Script, connect
from atp_service.storage.records import (
    UNCLAIMED,
    CrossGroupWrite,
    Fenced,
    Pending,
    SnapshotRecord,
    SnapshotUnreadable,
    claimed,
    encode_snapshot,
    number_of,
    wall_ms,
)
from atp_service.storage.resp import as_text
from atp_service.storage.scripts import APPEND_SCRIPT, CLAIM_AT_SCRIPT, CLAIM_SCRIPT, EPOCH_SCRIPT, FENCE_SCRIPT
from atp_service.storage.slots import CommitSlots
from atp_service.storage.snapshot_parts import PIECE_BYTES, write_snapshot_in_parts
from atp_service.storage.solo import SoloCommit
from atp_service.storage.window import CommitWindow

__all__ = ["CommitWindow", "CrossGroupWrite", "Fenced", "LogStore", "SnapshotRecord", "SnapshotUnreadable", "connect",
           "encode_snapshot"]


class LogStore(BatchCommit, SoloCommit, CommitSlots, LogReads):
    """Appends shard entries in shared pipelines (one round trip per event-loop turn, or per commit
    window when busy; ``batches.py``, ``solo.py``); on a Redis Cluster, a commit in flight per shard at
    most (``slots.py``). Here: this instance's claims on the groups, their fences, and snapshots written."""

    _APPEND, _FENCE, _CLAIM, _EPOCH, _CLAIM_AT = (
        Script(body) for body in (APPEND_SCRIPT, FENCE_SCRIPT, CLAIM_SCRIPT, EPOCH_SCRIPT, CLAIM_AT_SCRIPT))

    def __init__(self, client: Any, prefix: str, pipeline_max: int, max_in_flight: int = 1,
                 window: CommitWindow | None = None, metrics: StorageMetrics | None = None) -> None:
        self.nodes: Nodes = client if isinstance(client, Nodes) else Nodes(client)
        self.client: Any = self.nodes.reader
        """For reads (on a cluster, it routes each read by its key)."""
        self.metrics = metrics or StorageMetrics()
        self.prefix = prefix
        self.keys = Keyspace(prefix)
        self._pipeline_max = pipeline_max
        self._pending: list[Pending] = []
        self._first_pending_at = 0.0
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None  # a commit waiting for company (CommitWindow)
        self._in_flight = 0  # one Redis: group commits in flight (a cluster: per shard, ``_busy``)
        self._max_in_flight = max_in_flight
        self._busy = set()
        self._window = window or CommitWindow(0.0, 0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # ``_running_loop``
        self._groups = 0
        self._packer = AppendPacker(self._APPEND.sha, self._keys_of)
        # What a one-entry commit updates in place (``solo.py``), each read once here.
        self._sizes = self.metrics.pipeline_size.sizes
        self._append_seconds = self.metrics.append_seconds._children[()]  # the family's one series: no labels
        self.snapshots_in_flight = 0
        """Snapshot writes under way (``Checkpoints`` counts them). Shards snapshot one at a time unless
        stopping: those whose snapshots fall due together (same interval, same start) must not hand
        Redis all their state at once, which stalls every append behind it."""
        self._tokens: dict[int, int] = {}
        """Per shard, the fence value its writes carry (``fence``); a write is refused once the
        stored fence is above it."""
        self.epochs: dict[int, str] = {}
        """Per group (a shard, or ``CHANNELS``), this instance's claim on it (``claim``): the epoch its
        writes carry, the owner key's whole value (``records.claimed``); a group not claimed is written
        with ``UNCLAIMED``, which every owner key refuses."""
        self.claim_token = secrets.token_hex(8)  # its claims, resent or late, are one; its epochs' identity
        self.fenced = self.claim_lost = False
        """A write was refused: a newer instance owns the keyspace (``claim_lost``: none does, Redis
        lost this instance's claim, ``Fenced.claim_lost``). Final."""
        self.on_fenced: list[Callable[[], None]] = []
        self.leased = False
        """Groups are owned one by one (``leases.GroupLeases``), by several processes: a refused
        write loses its group only (``lost``), and no write spans groups."""
        self.lost: set[int] = set()
        """Leased groups whose writes were refused since they were taken: another process owns them."""
        self.on_group_lost: list[Callable[[int], None]] = []
        self.tracer: Any = None  # while tracing is on (app.tracing), a span per group commit

    @property
    def epoch(self) -> int:
        """The number of this instance's epoch: the highest drawn for its claims (0: none yet)."""
        return max(map(number_of, self.epochs.values()), default=0)

    async def claim(self, shards: int) -> int:
        """Own every shard's group and the channel feeds' from now on, adopting each group's fence:
        every later write of an older instance is refused. Called before recovery reads the log, so
        whatever an older instance wrote first is read back. Returns the epoch's number (``epoch``).
        On one Redis one script claims them all; on a cluster, an epoch no other claim has is drawn
        first, then each group is taken with it unless a newer claim holds it (``Fenced``)."""
        groups = [*range(shards), CHANNELS]
        if not self.nodes.together:
            return await self._claim_each(groups)
        keys = [k for g in groups for k in (self.keys.owner(g), self.keys.fence(g))]
        call = Call(self._CLAIM, [*keys, self.keys.claimants], [self.claim_token, wall_ms()])
        number, *fences = (int(v) for v in await self.nodes.run_one(call))
        epoch = claimed(number, self.claim_token)  # as the script wrote it, or the claim answered again did
        for group, fence in zip(groups, fences, strict=True):
            self.epochs[group], self._tokens[group] = epoch, fence
        return self.epoch

    async def _claim_each(self, groups: list[int]) -> int:
        """``claim`` on a cluster: one call per group (of instances claiming at once, the one whose
        epoch was drawn last owns every group; each of the others is refused, or overwritten)."""
        owners: Any = await self.client.mget_nonatomic([self.keys.owner(g) for g in groups])
        top = max(map(number_of, owners), default=0)
        number = int(await self.nodes.run_one(Call(self._EPOCH, [self.keys.claims], [top, wall_ms()])))
        epoch = claimed(number, self.claim_token)
        calls = [Call(self._CLAIM_AT, [self.keys.owner(g), self.keys.fence(g)], [epoch]) for g in groups]
        for group, reply in zip(groups, await self.nodes.run(calls), strict=True):
            if isinstance(reply, BaseException):
                raise self._refused(reply)
            self.epochs[group], self._tokens[group] = epoch, int(reply)
        return self.epoch

    def adopt(self, group: int, epoch: str, fence: int) -> None:
        """Write ``group`` from now on as ``epoch`` (its owner, see ``leases.GroupLeases``), carrying
        its fence ``fence``."""
        self.epochs[group], self._tokens[group] = epoch, max(self._tokens.get(group, 0), fence)
        self.lost.discard(group)

    def drop(self, group: int) -> None:
        """Stop writing ``group``: anything of it submitted from now on, or still waiting, is refused."""
        self.epochs.pop(group, None)

    def is_fenced(self, group: int) -> bool:
        """Whether writes of ``group`` are refused for good by this process's standing: the keyspace
        has a newer owner, or (leased) the group does."""
        return self.fenced or group in self.lost

    async def fence(self, shard: int) -> None:
        """Make every write of ``shard`` sent before now impossible to land (R7): raise its fence
        and carry the new value from here on. Whatever the log holds afterwards is final (with
        ``wait_replicas``, on that many replicas too: the fence follows those writes)."""
        epoch = self.epochs.get(shard, UNCLAIMED)
        call = Call(self._FENCE, [self.keys.owner(shard), self.keys.fence(shard)], [epoch, self._tokens.get(shard, 0)])
        try:
            raised = int(await self.nodes.run_one(call))
        except RedisError as exc:
            raise self._refused(exc, shard, epoch) from None
        # Two fences may overlap (a settle and a snapshot after a stop): the higher one stands.
        self._tokens[shard] = max(self._tokens.get(shard, 0), raised)

    async def still_owner(self, group: int | None = None) -> bool:
        """False (and fenced from now on) once a newer instance has claimed a group of this one;
        with ``group``, judged by that group's owner key alone (a settle: what the group's log holds is
        this instance's while it owns the group, R7), which on a cluster is read on that group's primary
        alone: one that does not answer holds no other primary's shards (liveness); without, by the owner
        keys of the primaries that answer (a newer claim raises every one). Leased groups: whether this
        process still owns ``group`` (another's loss is not this one's)."""
        if self.fenced:
            return False
        if self.leased and group is None:
            return False
        # Judged against the claims the read was made for.
        claims: dict[int, str | None] = dict(self.epochs) if group is None else {group: self.epochs.get(group)}
        keys = [self.keys.owner(g) for g in claims]
        for g, current in zip(claims, await self.values_answered(keys), strict=True):
            # The whole epoch: a number drawn again is another claim's.
            if not isinstance(current, BaseException) and as_text(current) != claims[g]:
                self._refused(Fenced(f"FENCED epoch {claims[g]} of {self.keys.owner(g)} was replaced by "
                                     f"{as_text(current)}"), g, claims[g])
                return False
        return not self.fenced  # nor refused meanwhile

    def _refused(self, exc: BaseException, group: int | None = None, epoch: str | None = None) -> BaseException:
        """``exc``, as ``Fenced`` when it says the keyspace (leased: ``group``, as written with
        ``epoch``) has a newer owner (noted, once). A refusal of an older taking of a leased group
        than the current one says nothing about the current one."""
        if not (isinstance(exc, Fenced) or (isinstance(exc, ResponseError) and str(exc).startswith("FENCED"))):
            return exc
        if self.leased:
            current = self.epochs.get(group) if group is not None else None
            if group is not None and current is not None and epoch in (None, current) and group not in self.lost:
                self.lost.add(group)
                for lost in self.on_group_lost:
                    lost(group)
        elif not self.fenced:
            self.fenced, self.claim_lost = True, Fenced(str(exc)).claim_lost
            for callback in self.on_fenced:
                callback()
        return exc if isinstance(exc, Fenced) else Fenced(str(exc))

    async def write_snapshot(self, shard: int, seq: int, data: bytes, extra_s: float = 0.0,
                             part_bytes: int = 0, piece_bytes: int = PIECE_BYTES) -> int:
        """Store a snapshot (``encode_snapshot``) and trim the log behind it, atomically; past
        ``part_bytes`` (0: while it fits one key) in parts, past ``piece_bytes`` in several keys
        (``snapshot_parts``). Returns its size in bytes.
        ``Checkpoints`` encodes it in the shard's turn, then writes it while the shard goes on,
        allowing it ``extra_s`` beyond the socket timeout for its size."""
        epoch = self.epochs.get(shard, UNCLAIMED)
        try:
            await write_snapshot_in_parts(self.nodes, self.keys, shard, seq, data,
                                          (epoch, self._tokens.get(shard, 0)), part_bytes, extra_s, piece_bytes)
        except RedisError as exc:
            raise self._refused(exc, shard, epoch) from None
        return len(data)
