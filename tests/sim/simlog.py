"""An in-process stand-in for ``LogStore`` that the simulation drives: it lands, fails or loses writes.

Appends wait in ``pending`` until the driver pumps them with an outcome, like Redis would answer:
``ok`` (landed), ``lost`` (not landed, the caller told so), ``doubt`` (landed, but the caller
was told it failed — a timeout after Redis applied the script), ``late`` (the caller told it
failed now; the script reaches Redis later — at a random moment the driver picks, possibly after
newer scripts and after the caller's settle read, unless a fence stopped it). A snapshot is written
by the service's own code, in parts past its configured size, each part a script call with an
outcome of its own (``snapparts.py``). Redis's checks are
modelled as the append script makes them: an entry of an instance that a newer one replaced is
refused (FENCED, the epoch), an entry whose shard was fenced after it was sent is refused (STALE),
an entry must follow its stream's newest (TAKEN / GAP), and a group (a cross-shard change) lands
all or none. A write pause (``pause``) answers nothing and holds every write command — fences and
snapshots too — until it ends, as ``CLIENT PAUSE ... WRITE`` does. Everything ever landed is also
kept in ``history`` (never trimmed) for the reference checks.

Where several processes share the keyspace (``leased.ProcessLog``, one per process, over this log) a
write carries its process and its group's epoch: each group has an owner key of its own (``owners``,
raised by whoever takes the group), a write under an older epoch is refused FENCED and its process
told the group is lost; a paused process's appends wait unsent, a killed one's land now, later or never.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import msgspec
from redis.exceptions import RedisError

from atp_service.metrics import StorageMetrics
from atp_service.storage.keys import Keyspace
from atp_service.storage.log import CrossGroupWrite, Fenced, SnapshotRecord
from atp_service.storage.records import UNCLAIMED, claimed, number_of, opened_snapshot
from atp_service.storage.snapshot_parts import PIECE_BYTES, write_snapshot_in_parts
from tests.sim.full import RedisFull, oom, refuses
from tests.sim.settlefaults import LateFence, SettleFaults, timed_out
from tests.sim.sidestreams import SideStreams
from tests.sim.snapkeys import Held, SnapshotReads, stored_bytes
from tests.sim.snapparts import ScriptCall, SimNodes, run_script
from tests.sim.tally import Tally

SNAPSHOT_SLOW_P = 0.7
"""The chance that a late snapshot script is not among the scripts arriving now (``arrive_late``)."""
_decoder = msgspec.msgpack.Decoder(SnapshotRecord)


def outranks(a: str, b: str) -> bool:
    """``scripts.CLAIM_ORDER_LUA``: whether owner value ``a`` is a later claim than ``b`` ("": none) —
    the higher number drawn, and of equal numbers the greater value."""
    return (number_of(a), a.encode()) > (number_of(b), b.encode())


def _decode(raw: bytes) -> SnapshotRecord:
    """A stored snapshot, its checksum checked as ``LogStore.load_snapshot`` checks it."""
    return _decoder.decode(opened_snapshot(raw, -1, "the simulated snapshot"))


class _Unit:
    """Entries sent together that share one answer (one entry, or a cross-shard group). ``proc``: the
    process that sent them where several share the keyspace (``leased.ProcessLog``), else None."""

    __slots__ = ("done", "entries", "epoch", "proc", "then")

    def __init__(self, entries: list[tuple[int, int, bytes, int]], done: asyncio.Future[None], epoch: str,
                 proc: Any = None) -> None:
        self.entries, self.done, self.epoch = entries, done, epoch  # (shard, seq, data, fence token)
        self.proc = proc
        self.then: Callable[[], None] | None = None  # called at once when settled (``LogStore.submit``)

    def settle(self, error: BaseException | None) -> None:
        """Answer the unit's future, then call ``then`` at once, as ``records.Pending.settle`` does."""
        if error is not None:
            self.done.set_exception(error)
        else:
            self.done.set_result(None)
        if self.then is not None:
            self.then()

    @property
    def shard(self) -> int:
        return self.entries[0][0]


class SimLog:
    def __init__(self, tally: Tally | None = None, together: bool = True) -> None:
        self.together = together
        """False: a Redis Cluster, where entries of several shards cannot land all or none."""
        self.logs: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        self.snapkeys: Held = {}  # the snapshots' keys, stored and staged (``snapkeys.py``)
        self.snapshots_sent: set[tuple[int, int, bytes]] = set()  # (shard, seq, digest) the service wrote
        self.torn: list[str] = []  # snapshots stored that the service never wrote whole
        self.history: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        self.pending: list[_Unit] = []
        self.late: list[_Unit | ScriptCall | LateFence] = []  # sent, the caller told it failed, not yet arrived
        self.fences: dict[int, int] = defaultdict(int)  # Redis's fence per shard
        self.tokens: dict[int, int] = defaultdict(int)  # what this instance's writes carry
        self.redis_epoch = UNCLAIMED  # the epoch in every group's owner key (one script claims them all)
        """Before any claim, the epoch of an instance that claimed nothing: a shard of a log never claimed
        (the engine's own tests) writes as its only owner, as it did while epochs were numbers."""
        self.owners: dict[int, str] = defaultdict(str)
        """Several processes (``leased.ProcessLog``): each group's owner key, the epoch of its last taker."""
        self.claims = 0  # the numbers drawn so far (``<prefix>claims``): each taking draws a new one
        self.now_ms: Callable[[], int] = lambda: 0
        """Redis's clock (``scripts.DRAW_LUA``: no number drawn below it, nor below the claimant's); the world's."""
        self.epoch = UNCLAIMED  # this instance's claim: ``<number>:<identity>`` (``records.claimed``)
        self._identities = random.Random(0)
        """Each claim's identity (a random token or nonce in the service): a process's, never in Redis's data."""
        self.client: Any = SideStreams()
        self.metrics = StorageMetrics()
        self.fenced = self.claim_lost = False
        """One process: no newer instance ever claims the keyspace, but Redis may lose this one's claim
        (``tailloss.py``: restored from older data); then, as ``LogStore._refused``, fenced for good."""
        self.on_fenced: list[Callable[[], None]] = []
        self.leased = False  # one process owns every group
        self.tracer = None  # the simulation traces nothing (atp_service.traces)
        self.tally = tally or Tally()
        self.paused = False
        self.snapshots_in_flight = 0
        self._resumed: asyncio.Event | None = None
        self.faults: random.Random | None = None  # with it, snapshot writes fail too
        self.nodes = SimNodes(self)
        self.keys = Keyspace("sim:")
        self.reads = SnapshotReads(self)  # recovery's read of a snapshot: the service's own
        self.ids: Any = None  # several processes: the reservation id claims (``ids.SimIdClaims``)
        self.full: RedisFull | None = None  # ``--redis-full``: writes refused OOM (``full.py``)
        self.settle: SettleFaults | None = None  # ``--settle-faults``: a settle's calls fail (``settlefaults.py``)

    # -- what ShardActor and Engine call -----------------------------------------------
    def is_fenced(self, _shard: int) -> bool:
        return self.fenced

    def submit(self, shard: int, seq: int, data: bytes, then: Callable[[], None] | None = None) -> asyncio.Future[None]:
        fut = self.submit_group([(shard, seq, data)])
        self.pending[-1].then = then
        return fut

    def unsent(self, done: asyncio.Future[None]) -> bool:
        """``LogStore.unsent``: never here. A unit waiting here may already be on the wire (``pump``
        lands units given up by their shard at random), so a failed shard keeps it in doubt, as the
        real log does for an entry sent and unanswered."""
        return False

    def submit_group(self, entries: list[tuple[int, int, bytes]]) -> asyncio.Future[None]:
        if not self.together and len({shard for shard, _, _ in entries}) > 1:
            raise CrossGroupWrite(f"entries of shards {sorted({s for s, _, _ in entries})} on a cluster")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entries_ = [(sh, seq, data, self.tokens[sh]) for sh, seq, data in entries]
        self.pending.append(_Unit(entries_, fut, self.epoch))
        return fut

    async def claim(self, shards: int) -> int:
        """One Redis (``CLAIM_SCRIPT``): every group's owner key takes the new epoch at once, its number
        above the one they hold and no lower than Redis's clock or the claimant's (one clock here), and
        its fence is adopted."""
        number = max(number_of(self.redis_epoch) + 1, self.now_ms())
        self.redis_epoch = self.epoch = claimed(number, self.identity())
        self.fenced = self.claim_lost = False  # a new instance
        for shard in range(shards):
            self.tokens[shard] = self.fences[shard]
        return number

    def identity(self) -> str:
        """A claim's own identity (``LogStore.claim_token``, a leased taking's nonce)."""
        return f"{self._identities.getrandbits(64):016x}"

    async def round_trip(self, faults: random.Random | None = None) -> None:
        """A command to Redis and its answer take a few event-loop turns: others run meanwhile (how many:
        drawn from ``faults``, by default the log's own stream)."""
        faults = faults or self.faults
        for _ in range(1 + (faults.randrange(3) if faults is not None else 0)):
            await asyncio.sleep(0)

    async def fence(self, shard: int) -> None:
        await self.round_trip()
        await self.writable()
        if self.faults is not None and self.faults.random() < 0.3:
            self.arrive_late()  # scripts on their way got there just before the fence did
        outcome = self.settle.fence() if self.settle is not None else "ok"
        if outcome == "lost":
            raise timed_out(outcome)
        if outcome == "late":
            self.late.append(LateFence(shard, self.tokens[shard], self.epoch))
            raise timed_out(outcome)
        if self.redis_epoch != self.epoch:
            raise self.refused_claim()  # FENCE_SCRIPT checks the owner key first
        # FENCE_SCRIPT: above the token too (Redis come back from older data holds a fence below it).
        self.fences[shard] = max(self.fences[shard], self.tokens[shard]) + 1
        if outcome == "doubt":
            raise timed_out(outcome)  # raised in Redis; the answer, and so the new token, lost
        self.tokens[shard] = self.fences[shard]

    async def last_seq(self, shard: int) -> int:
        if self.settle is not None:
            self.settle.read("the log's end")
        return self._last(shard)

    async def last_seqs(self, shards: list[int]) -> list[int]:
        return [self._last(shard) for shard in shards]

    async def log_begun(self, shard: int) -> bool:
        """``LogStore.log_begun``: the simulated Redis never loses a log without its mark (no trip: the seeds'
        fault draws stay as they were)."""
        return self._last(shard) > 0

    def nodes_of(self, shards: list[int]) -> dict[str, list[int]]:
        """``LogStore.nodes_of``: one node here (its faults are the round trip's)."""
        return {"": list(shards)}

    async def still_owner(self, _group: int | None = None) -> bool:
        """``LogStore.still_owner``: whether the owner keys still hold this instance's claim."""
        await self.round_trip()
        if self.settle is not None:
            self.settle.read("the owner keys")
        if not self.fenced and self.redis_epoch != self.epoch:
            self.refused_claim()
        return not self.fenced

    def refused_claim(self) -> Fenced:
        """A write refused FENCED, as ``LogStore._refused`` takes it on one Redis: fenced for good, the
        callbacks told once; ``claim_lost`` when the owner key holds no newer claim (it cannot here)."""
        refusal = Fenced(f"FENCED epoch {self.epoch} was replaced by {self.redis_epoch or 'false'}")
        if not self.fenced:
            self.fenced, self.claim_lost = True, refusal.claim_lost
            for callback in self.on_fenced:
                callback()
        return refusal

    async def entries_after(self, shard: int, seq: int) -> AsyncIterator[tuple[int, bytes]]:
        await self.round_trip()
        if self.settle is not None:
            self.settle.read("the log's entries")
        for entry_seq, data in list(self.logs[shard]):
            if entry_seq > seq:
                yield entry_seq, data

    def stored(self, shard: int) -> tuple[bytes | None, SnapshotRecord | None, list[tuple[int, bytes]]]:
        """What Redis holds for a shard: its snapshot's bytes, the snapshot they decode to, and its log."""
        raw = stored_bytes(self.snapkeys, self.keys, shard)
        return raw, (_decode(raw) if raw else None), list(self.logs[shard])

    async def load_snapshot(self, shard: int) -> SnapshotRecord | None:
        return await self.reads.load_snapshot(shard)

    async def write_snapshot(self, shard: int, seq: int, data: bytes, extra_s: float = 0.0,
                             part_bytes: int = 0, piece_bytes: int = PIECE_BYTES) -> int:
        """Store the snapshot and trim the log behind it, as ``LogStore.write_snapshot`` does: the
        service's own code, its script calls answered by the simulated Redis (``snapparts.py``)."""
        self.nodes.wrote(shard, seq, data)
        try:
            await write_snapshot_in_parts(self.nodes, self.keys, shard, seq, data, (self.epoch, self.tokens[shard]),
                                          part_bytes, extra_s, piece_bytes)
        except RedisError as exc:
            if str(exc).startswith("FENCED"):
                raise self.refused_claim() from None
            raise
        return len(data)

    # -- write pauses ---------------------------------------------------------------------
    async def write_turn(self) -> None:
        """A write command's trip: a round trip that waits out a write pause."""
        await self.round_trip()
        await self.writable()

    async def writable(self) -> None:
        """A write command waits while writes are paused (it is answered once they resume)."""
        while self.paused:
            assert self._resumed is not None
            await self._resumed.wait()

    def pause(self) -> None:
        self.paused = True
        self._resumed = asyncio.Event()
        self.tally.pauses += 1

    def resume(self) -> None:
        self.paused = False
        if self._resumed is not None:
            self._resumed.set()

    # -- what the driver calls -----------------------------------------------------------
    def pump(self, outcome: str, late_first: bool = True, count: int | None = None) -> None:
        """Answer the appends sent so far (the oldest ``count`` of them: a script call of its own) with
        one outcome. With ``late_first`` the scripts still on their way arrive before these; without,
        these overtake them (another connection, a delaying proxy)."""
        if late_first:
            self.arrive_late()
        count = len(self.pending) if count is None else count
        batch, self.pending = self.pending[:count], self.pending[count:]
        held = [unit for unit in batch if unit.proc is not None and unit.proc.frozen]
        self.pending[:0] = held  # a paused process has sent nothing yet: they go once it runs again
        for unit in batch:
            if unit.proc is not None and unit.proc.frozen:
                continue
            if unit.done.done():  # given up by its shard: not sent yet (never will be), or on the wire
                if self.faults is not None and self.faults.random() < 0.5 and outcome in ("ok", "doubt"):
                    self.land(unit)
                continue
            self.tally.count_outcome(outcome)
            if outcome == "late":
                self.late.append(unit)
                unit.settle(RedisError("sim: append timed out (still on its way)"))
                continue
            refusal = self.land(unit) if outcome != "lost" else None
            if outcome != "ok":
                unit.settle(RedisError(f"sim: append {outcome}"))
            elif refusal == "FENCED" and unit.proc is not None:
                unit.settle(unit.proc.refused(unit.shard))  # its group has a newer owner
            elif refusal == "FENCED":
                unit.settle(self.refused_claim())  # Redis lost this instance's claim
            elif refusal is not None:
                unit.settle(oom() if refusal == "OOM" else RedisError(f"sim: {refusal}"))
            else:
                unit.settle(None)

    def arrive_late(self, count: int | None = None) -> None:
        """The oldest ``count`` (default: all) scripts still on their way reach Redis now: landed,
        or refused by a fence, an epoch or the stream's newest id."""
        count = len(self.late) if count is None else count
        arriving, self.late = self.late[:count], self.late[count:]
        for unit in arriving:
            if isinstance(unit, ScriptCall) and self.faults is not None and self.faults.random() < SNAPSHOT_SLOW_P:
                self.late.append(unit)  # much data on a slow path: it may still be on its way at the next try
                continue
            self.tally.late_arrived(self.land(unit) is None)

    def crash(self, rng: random.Random) -> None:
        """The process dies. What it had sent (late scripts, then appends not yet answered) each
        reaches Redis now, later (after the restart: refused, its epoch replaced) or never."""
        sent: list[_Unit | ScriptCall | LateFence] = self.late + [u for u in self.pending if not u.done.done()]
        self.pending, self.late = [], []
        self._scatter(sent, rng)
        self.resume()  # a restart does not wait for Redis's pause: the pause ends with the crash

    def kill(self, proc: Any, rng: random.Random) -> None:
        """One of several processes dies (kill -9): each of its appends not yet answered reaches Redis
        now, later or never (its scripts already on their way stay so)."""
        sent = [u for u in self.pending if u.proc is proc and not u.done.done()]
        self.pending = [u for u in self.pending if u.proc is not proc]
        self._scatter(sent, rng)

    def _scatter(self, sent: Sequence[_Unit | ScriptCall | LateFence], rng: random.Random) -> None:
        """What a dead process had sent: each reaches Redis now, later (``late``) or never."""
        for unit in sent:
            fate = rng.random()
            if fate < 0.4:
                self.tally.late_arrived(self.land(unit) is None)
            elif fate < 0.7:
                self.late.append(unit)

    def draw_epoch(self, top: str = "", clock_ms: int = 0) -> str:
        """``EPOCH_SCRIPT``: a number above every one drawn before and ``top``'s (a group's owner key, read
        first by a taking), and not below the time now (Redis's) nor ``clock_ms`` (the claimant's clock);
        the epoch is that number with an identity of its own (``GroupLeases._draw``)."""
        self.claims = max(self.claims + 1, number_of(top) + 1, self.now_ms(), clock_ms)
        return claimed(self.claims, self.identity())

    def newest_id(self, shard: int) -> int:
        """The seq of the log's newest id ever (``last-generated-id``: a trim keeps its own entry)."""
        return self._last(shard)

    def _last(self, shard: int) -> int:
        log = self.logs[shard]
        if log:
            return log[-1][0]
        snap = stored_bytes(self.snapkeys, self.keys, shard)
        return _decode(snap).seq if snap else 0

    def _refusal(self, shard: int, seq: int, token: int) -> str | None:
        if self.fences[shard] > token:
            return "STALE"
        last = self._last(shard)
        if seq <= last:
            return "TAKEN"
        if seq != last + 1:
            return "GAP"
        return None

    def land(self, unit: _Unit | ScriptCall | LateFence) -> str | None:
        """Land a unit all or none, as the append (or snapshot) script would; the refusal, if any."""
        if isinstance(unit, ScriptCall):
            return run_script(self, unit)
        if isinstance(unit, LateFence):
            return self.land_fence(unit)
        if unit.epoch != (self.redis_epoch if unit.proc is None else self.owners[unit.shard]):
            return "FENCED"  # a replaced instance's; several processes: its group's owner key (one per group)
        for shard, seq, _, token in unit.entries:
            refusal = self._refusal(shard, seq, token)
            if refusal is not None:
                return refusal
        if refuses(self.full):
            return "OOM"  # at its maxmemory: the script's checks read, its first write is refused (``full.py``)
        for shard, seq, data, _ in unit.entries:
            self.logs[shard].append((seq, data))
            self.history[shard].append((seq, data))
        return None

    def land_fence(self, fence: LateFence) -> str | None:
        """A fence script arriving late (``--settle-faults``): ``FENCE_SCRIPT`` with the token it carried, so
        above every fence raised since; refused FENCED when its owner key has a newer claim."""
        if fence.epoch != (self.redis_epoch if fence.proc is None else self.owners[fence.shard]):
            return "FENCED"
        self.fences[fence.shard] = max(self.fences[fence.shard], fence.token) + 1
        self.tally.late_fences += 1
        return None
