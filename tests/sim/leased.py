"""One service process's ``LogStore`` where several processes share a keyspace (``ownership = leases``),
over the shared ``SimLog`` (one Redis).

It *is* a ``LogStore`` with the Redis calls replaced: what the real one decides on the client side
runs as it is — each group's claim (``adopt``, ``drop``), the fence tokens, ``is_fenced``, a refusal
turned into a lost group (``_refused``: ``lost``, ``on_group_lost``), ``still_owner`` and a snapshot's
write (its script calls run by the shared log, ``snapparts.SimNodes``) — while the
writes go through the shared log's pending list and checks, so the driver answers every process's
appends as Redis would, and a write of a deposed owner is refused FENCED there (the owner key of
each group is ``SimLog.owners``). An append carries the epoch its group had when it was submitted.

A paused process (``frozen``, SIGSTOP) sends nothing: its round trips wait, and the shared log's
``pump`` leaves its appends unsent until it runs again. A dead one (``dead``) reaches nothing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

from redis.exceptions import ResponseError

from atp_service.storage.log import CrossGroupWrite, LogStore, SnapshotRecord
from atp_service.storage.nodes import Nodes
from atp_service.storage.records import UNCLAIMED
from atp_service.storage.snapshot_parts import PIECE_BYTES
from tests.sim.settlefaults import LateFence, timed_out
from tests.sim.sidestreams import SideStreams
from tests.sim.simlog import SimLog, _Unit
from tests.sim.snapparts import SimNodes


class _Reader:
    """What ``LogStore`` reads through its client: owner keys (``still_owner``), and the quarantine stream."""

    def __init__(self, store: ProcessLog, redis: SimLog) -> None:
        self._store = store
        self._streams: SideStreams = redis.client  # one quarantine stream, as Redis holds it, whoever writes
        self._groups = {store.keys.owner(g): g for g in range(64)}

    async def time(self) -> tuple[int, int]:
        return await self._streams.time()

    def pipeline(self, transaction: bool = False) -> Any:
        return self._streams.pipeline(transaction)

    async def mget_nonatomic(self, keys: list[str]) -> list[str | None]:
        await self._store.round_trip()
        owners = self._store.redis.owners
        return [owners[self._groups[k]] or None for k in keys]


class ProcessLog(LogStore):
    def __init__(self, redis: SimLog, name: str) -> None:
        super().__init__(Nodes(None, cluster=True), "sim:", pipeline_max=6)
        # Snapshots: ``LogStore.write_snapshot`` as it is, its script calls run by the shared log
        self.nodes = SimNodes(redis, self, _Reader(self, redis))  # type: ignore[assignment]
        self.client = self.nodes.reader
        self.leased = True
        self.redis, self.name = redis, name
        self.frozen = False
        self.dead = False
        self.check_faults: random.Random | None = None
        self._thawed = asyncio.Event()
        self._thawed.set()

    def refused(self, group: int) -> BaseException:
        """A write of ``group`` answered FENCED (its owner key holds a newer epoch), as ``LogStore`` takes it."""
        self.redis.tally.fenced_writes += 1
        return self._refused(ResponseError(f"FENCED epoch {self.epochs.get(group, UNCLAIMED)} of group {group} was "
                                           f"replaced by {self.redis.owners[group] or 'false'}"), group)

    # -- pause and death --------------------------------------------------------------------
    def freeze(self) -> None:
        self.frozen = True
        self._thawed.clear()

    def thaw(self) -> None:
        self.frozen = False
        self._thawed.set()

    async def awake(self) -> None:
        """Returns once this process runs (waits while it is paused); a dead one reaches nothing."""
        while self.frozen:
            await self._thawed.wait()
        if self.dead:
            raise ConnectionError(f"sim: process {self.name} is dead")

    async def round_trip(self, faults: random.Random | None = None) -> None:
        await self.awake()
        await self.redis.round_trip(faults)
        await self.awake()

    async def write_turn(self) -> None:
        """A write command's trip: it waits out a Redis write pause and this process's own pause."""
        await self.round_trip()
        await self.redis.writable()
        await self.awake()

    # -- the Redis calls of ``LogStore``, against the shared log ------------------------------------
    def submit(self, shard: int, seq: int, data: bytes, then: Callable[[], None] | None = None) -> asyncio.Future[None]:
        fut = self.submit_group([(shard, seq, data)])
        if then is None:
            pass
        elif fut.done():  # dead: failed already, before its shard has it in flight
            fut.add_done_callback(lambda _: then())
        else:
            self.redis.pending[-1].then = then
        return fut

    def submit_group(self, entries: Any) -> asyncio.Future[None]:
        shards = {shard for shard, _, _ in entries}
        if len(shards) > 1:
            raise CrossGroupWrite(f"entries of shards {sorted(shards)}: each group may be another process's")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.dead:
            fut.set_exception(ConnectionError(f"sim: process {self.name} is dead"))
            return fut
        shard = entries[0][0]
        unit = _Unit([(sh, seq, data, self._tokens.get(sh, 0)) for sh, seq, data in entries], fut,
                     self.epochs.get(shard, UNCLAIMED), self)
        self.redis.pending.append(unit)
        return fut

    async def fence(self, shard: int) -> None:
        epoch = self.epochs.get(shard, UNCLAIMED)
        await self.write_turn()
        redis = self.redis
        if redis.faults is not None and redis.faults.random() < 0.3:
            redis.arrive_late()  # scripts on their way got there just before the fence did
        outcome = redis.settle.fence() if redis.settle is not None else "ok"
        if outcome == "lost":
            raise timed_out(outcome)
        if outcome == "late":
            redis.late.append(LateFence(shard, self._tokens.get(shard, 0), epoch, self))
            raise timed_out(outcome)
        if redis.owners[shard] != epoch:
            raise self.refused(shard)
        redis.fences[shard] = max(redis.fences[shard], self._tokens.get(shard, 0)) + 1  # FENCE_SCRIPT
        if outcome == "doubt":
            raise timed_out(outcome)  # raised in Redis; the answer, and so the new token, lost
        self._tokens[shard] = redis.fences[shard]

    async def last_seq(self, shard: int) -> int:
        await self.round_trip()
        if self.redis.settle is not None:
            self.redis.settle.read("the log's end")
        return self.redis._last(shard)

    def nodes_of(self, shards: list[int]) -> dict[str, list[int]]:
        """``LogStore.nodes_of``: one node here (its faults are the round trip's)."""
        return {"": list(shards)}

    async def last_seqs(self, shards: list[int]) -> list[int]:
        """The owner check's log-end read (``Engine.check_logs_reach``): its trip draws from a stream of its
        own (``check_faults``), so that running it leaves every other draw of a seed as it was."""
        await self.round_trip(self.check_faults)
        return [self.redis._last(shard) for shard in shards]

    async def log_begun(self, shard: int) -> bool:
        """``LogStore.log_begun``: the simulated Redis never loses a log without its mark (no trip: the seeds'
        fault draws stay as they were)."""
        return self.redis._last(shard) > 0

    async def entries_after(self, shard: int, seq: int, chunk: int = 2000) -> AsyncIterator[tuple[int, bytes]]:
        await self.round_trip()
        if self.redis.settle is not None:
            self.redis.settle.read("the log's entries")
        for entry_seq, data in list(self.redis.logs[shard]):
            if entry_seq > seq:
                yield entry_seq, data

    async def entry_at(self, shard: int, seq: int) -> bytes | None:
        await self.round_trip()
        return next((data for entry_seq, data in self.redis.logs[shard] if entry_seq == seq), None)

    async def load_snapshot(self, shard: int) -> SnapshotRecord | None:
        await self.round_trip()
        return await self.redis.reads.load_snapshot(shard)

    async def write_snapshot(self, shard: int, seq: int, data: bytes, extra_s: float = 0.0,
                             part_bytes: int = 0, piece_bytes: int = PIECE_BYTES) -> int:
        self.nodes.wrote(shard, seq, data)  # then ``LogStore``'s own
        return await super().write_snapshot(shard, seq, data, extra_s, part_bytes, piece_bytes)
