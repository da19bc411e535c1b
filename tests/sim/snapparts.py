"""A snapshot's write as the simulated Redis takes it: the service's own ``write_snapshot_in_parts``
(``atp_service/storage/snapshot_parts.py``) runs as it is, over ``SimNodes``, and each script call it
makes reaches the simulated Redis (``SimLog``) with an outcome drawn like an append's: landed; lost;
landed though the caller is told it failed (in doubt); or still on its way (late: it arrives at a
moment the driver picks, possibly after the next try's fence). Before a part, staging keys may be
lost (they carry a time to live: evicted under a volatile-* policy, or expired in a long stall).

Redis runs each call check for check as its Lua script does (``snapkeys.py``), on the keys the call names:
the owner key must hold the call's epoch (FENCED), the shard's fence must not be above its token (STALE),
the last part and a whole snapshot need the log's newest id at or past the snapshot's seq (GAP) and name
as many stored pieces as ``snap-pieces`` holds (PIECES), a part after a piece's first must find the try's
id and its piece in the try key and its staging key exactly as long as its offset (PARTS_LOST), and the last
part every piece before its own staged whole (PARTS_LOST). Some seeds' service spreads a snapshot over
several keys (``PIECE_BYTES``), so that every fault here meets snapshots of several pieces too.
"""

from __future__ import annotations

import hashlib
import random
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_service.intake.quarantine import WRITE_ONCE_SCRIPT
from atp_service.storage.log_reads import REPLY_BYTES
from atp_service.storage.nodes import Call
from atp_service.storage.records import sealed_snapshot
from atp_service.storage.snapshot_parts import PIECE_BYTES as SERVICE_PIECE_BYTES
from atp_service.storage.snapshot_parts import WHOLE_SCRIPT
from tests.sim.snapkeys import lose_staging, run_lua, shard_of

if TYPE_CHECKING:
    from tests.sim.simlog import SimLog

WHOLE_OUTCOMES = ("ok",) * 7 + ("lost", "doubt", "late")
PART_OUTCOMES = ("ok",) * 13 + ("lost", "doubt", "late")
"""A snapshot of several parts fails if any part does: each part fails less often than a whole one."""
STAGING_LOST_P = 0.05
PART_BYTES = (1 << 20, 64 << 10, 45_000, 30_000)
"""The part sizes a simulation's service is configured with (by seed): the sim's snapshots are of
~100-130 KB, so one part, two, three or four."""
PIECE_BYTES = (SERVICE_PIECE_BYTES, 64 << 10, 48_000, 33_000, 25_000)
"""The most one key of a stored snapshot holds (``snapshot_piece_bytes``), by seed: the default (one key), or
about two, three, four or five keys (a part never crosses a piece: it ends where its piece does)."""
RESIZE_P = 0.3
"""Where a seed's pieces are small: at each start of an instance (a restart; with several processes, each
process started), the chance its ``snapshot_piece_bytes`` is another of ``PIECE_BYTES`` (an operator changed
it, a rolling change of the setting): Redis then holds a snapshot in another count of keys than the started
instance writes (refused PIECES, sent again), and a snapshot goes to fewer keys too (the old ones deleted).
A snapshot only grows otherwise (nothing is forgotten in a seed)."""
READ_BYTES = (REPLY_BYTES, 16_000)
"""The parts recovery reads a stored key in (``LogReads.reply_bytes``), by seed: one, or several a key."""
EARLIER_FIRST_P = 0.3
"""The chance that a snapshot script call finds the shard's earlier ones still on their way arriving
just before it (another connection, a delaying proxy): a part of a try that failed lands between
the parts of the next, unless the fence raised before that try refuses it."""


class PieceSizes:
    """The ``snapshot_piece_bytes`` of each instance a seed starts, drawn from a stream of its own (the seed's
    other draws stay as they were); a seed of the default one keeps it."""

    def __init__(self, seed: int) -> None:
        self.bytes = PIECE_BYTES[seed // 8 % len(PIECE_BYTES)]
        self._rng = random.Random(f"pieces {seed}") if self.bytes != SERVICE_PIECE_BYTES else None

    def next_instance(self) -> int:
        if self._rng is not None and self._rng.random() < RESIZE_P:
            self.bytes = self._rng.choice(PIECE_BYTES)
        return self.bytes


class ScriptCall:
    """One snapshot script call on its way to Redis; ``proc``: its process where several share the
    keyspace (``leased.ProcessLog``: the owner key is its group's own), else None."""

    __slots__ = ("call", "proc", "shard")

    def __init__(self, call: Call, proc: Any = None) -> None:
        self.call, self.proc, self.shard = call, proc, shard_of(call.keys[0])


def run_script(redis: SimLog, unit: ScriptCall) -> str | None:
    """Run the call as Redis runs its script: None when it did what it does, else its error reply
    (nothing changed)."""
    refusal = run_lua(redis, unit)
    if refusal is not None:
        redis.tally.snapshot_refused += 1
        redis.tally.pieces_refused += refusal.startswith("PIECES")
    return refusal


def arrive_earlier(redis: SimLog, shard: int) -> None:
    """The snapshot script calls of ``shard`` still on their way arrive now, in the order sent."""
    arriving = [u for u in redis.late if isinstance(u, ScriptCall) and u.shard == shard]
    redis.late = [u for u in redis.late if u not in arriving]
    for unit in arriving:
        redis.tally.late_arrived(redis.land(unit) is None)


class SimNodes:
    """What ``write_snapshot_in_parts`` calls (``Nodes.run_one``): each call a trip to the simulated
    Redis (a round trip that waits out write pauses; a paused process's waits for it), an outcome
    drawn, then run there."""

    def __init__(self, redis: SimLog, proc: Any = None, reader: Any = None) -> None:
        self.redis, self.proc, self.reader = redis, proc, reader
        self.cluster = proc is not None
        self.together = not self.cluster

    def wrote(self, shard: int, seq: int, data: bytes) -> None:
        """The service writes ``data`` as ``shard``'s snapshot at ``seq``: Redis may store it whole."""
        self.redis.snapshots_sent.add((shard, seq, hashlib.sha1(sealed_snapshot(data)).digest()))  # as stored

    async def run(self, calls: list[Call], extra_s: float = 0.0) -> list[Any]:
        """``Nodes.run``: reservation id claims (``ids.SimIdClaims``), where several processes share the keyspace;
        the quarantine stream's writes (``FactDesk``), where the simulated Redis's client takes them."""
        if calls and calls[0].script is WRITE_ONCE_SCRIPT:
            replies: list[Any] = await self.redis.client.run(calls)
            return replies
        return await self.redis.ids.run(self.proc, calls)

    async def run_one(self, call: Call, extra_s: float = 0.0) -> Any:
        await (self.proc.write_turn() if self.proc is not None else self.redis.write_turn())
        redis, unit = self.redis, ScriptCall(call, self.proc)
        faults, whole = redis.faults, call.script is WHOLE_SCRIPT
        if faults is not None and faults.random() < EARLIER_FIRST_P:
            arrive_earlier(redis, unit.shard)
        if faults is not None and not whole and faults.random() < STAGING_LOST_P:
            redis.tally.staging_lost += lose_staging(redis, unit.shard, faults)
        outcome = "ok" if faults is None else faults.choice(WHOLE_OUTCOMES if whole else PART_OUTCOMES)
        redis.tally.count_outcome(outcome)
        redis.tally.snapshot_parts += not whole
        if outcome == "late":
            redis.late.append(unit)
            raise RedisTimeoutError("sim: snapshot script timed out (still on its way)")
        if outcome == "lost":
            raise RedisConnectionError("sim: snapshot script lost (never reached Redis)")
        refusal = redis.land(unit)
        if outcome == "doubt":
            raise RedisTimeoutError("sim: snapshot script timed out (it reached Redis)")
        if refusal is not None:
            redis.tally.fenced_writes += refusal.startswith("FENCED") and self.proc is not None
            raise ResponseError(refusal)
        return b"OK"
