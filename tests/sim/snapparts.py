"""A snapshot's write as the simulated Redis takes it: the service's own ``write_snapshot_in_parts``
(``atp_service/storage/snapshot_parts.py``) runs as it is, over ``SimNodes``, and each script call it
makes reaches the simulated Redis (``SimLog``) with an outcome drawn like an append's: landed; lost;
landed though the caller is told it failed (in doubt); or still on its way (late: it arrives at a
moment the driver picks, possibly after the next try's fence). Before a part, the staging key may be
lost (it carries a time to live: evicted under a volatile-* policy, or expired in a long stall).

Redis runs each call check for check as its Lua script does (``scripts.py``, ``snapshot_parts.py``),
refusing with the same error reply: the owner key must hold the call's epoch (FENCED), the shard's
fence must not be above its token (STALE), the last part and a whole snapshot need the log's newest
id at or past the snapshot's seq (GAP), and a part after the first must find the staging key exactly
as long as its offset (PARTS_LOST). Then SET / APPEND / RENAME (+ PERSIST) / XTRIM MINID seq. A snapshot
is one key here: the sim's (~100-130 KB) are far below ``snapshot_piece_bytes``, past which the service
spreads one over several (``test_snapshot_parts.py`` covers those on a real Redis).
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_service.storage.nodes import Call
from atp_service.storage.records import sealed_snapshot
from atp_service.storage.snapshot_parts import LAST_PART_SCRIPT, PART_SCRIPT, WHOLE_SCRIPT

if TYPE_CHECKING:
    from tests.sim.simlog import SimLog

WHOLE_OUTCOMES = ("ok",) * 7 + ("lost", "doubt", "late")
PART_OUTCOMES = ("ok",) * 13 + ("lost", "doubt", "late")
"""A snapshot of several parts fails if any part does: each part fails less often than a whole one."""
STAGING_LOST_P = 0.05
PART_BYTES = (1 << 20, 64 << 10, 45_000, 30_000)
"""The part sizes a simulation's service is configured with (by seed): the sim's snapshots are of
~100-130 KB, so one part, two, three or four."""
EARLIER_FIRST_P = 0.3
"""The chance that a snapshot script call finds the shard's earlier ones still on their way arriving
just before it (another connection, a delaying proxy): a part of a try that failed lands between
the parts of the next, unless the fence raised before that try refuses it."""
_GROUP = re.compile(r"\{g(\d+)\}")


def shard_of(key: str) -> int:
    match = _GROUP.search(key)
    assert match is not None, key
    return int(match[1])


class ScriptCall:
    """One snapshot script call on its way to Redis; ``proc``: its process where several share the
    keyspace (``leased.ProcessLog``: the owner key is its group's own), else None."""

    __slots__ = ("call", "proc", "shard")

    def __init__(self, call: Call, proc: Any = None) -> None:
        self.call, self.proc, self.shard = call, proc, shard_of(call.keys[0])


def run_script(redis: SimLog, unit: ScriptCall) -> str | None:
    """Run the call as Redis runs its script: None when it did what it does, else its error reply
    (nothing changed)."""
    refusal = _run(redis, unit)
    if refusal is not None:
        redis.tally.snapshot_refused += 1
    return refusal


def _run(redis: SimLog, unit: ScriptCall) -> str | None:
    """Arguments as the service sends them: epoch, data, seq (a part: the TTL), token, offset."""
    call, shard = unit.call, unit.shard
    owner = redis.owners[shard] if unit.proc is not None else redis.redis_epoch
    epoch, token = str(call.args[0]), int(call.args[3])
    if owner != epoch:  # FENCE_LUA: GET of a missing key is false in Lua
        return f"FENCED epoch {epoch} was replaced by {owner or 'false'}"
    if redis.fences[shard] > token:
        return f"STALE shard fenced at {redis.fences[shard]}"
    data: bytes = call.args[1]
    assert call.script is WHOLE_SCRIPT or int(call.args[6]) == 0, "a snapshot past one piece: not modelled"
    if call.script is PART_SCRIPT:
        return _part(redis, shard, data, int(call.args[4]), str(call.args[5]))
    seq = int(call.args[2])
    if redis.newest_id(shard) < seq:  # LOG_REACHES_LUA
        return f"GAP snapshot of entry {seq} but the log ends at {redis.newest_id(shard)}"
    if call.script is LAST_PART_SCRIPT:
        refusal = _offset_refusal(redis, shard, int(call.args[4]), str(call.args[5]))
        if refusal is not None:
            return refusal
        data = redis.staging.pop(shard)[1] + data  # APPEND, RENAME to the snapshot, PERSIST (the try id DELeted)
    else:
        assert call.script is WHOLE_SCRIPT, call.script
    if (shard, seq, hashlib.sha1(data).digest()) not in redis.snapshots_sent:
        redis.torn.append(f"shard {shard}: a snapshot of entry {seq} stored ({len(data)} bytes) is none the "
                          "service wrote (a mixture of parts, or parts of another try)")
    redis.snaps[shard] = data
    redis.logs[shard] = [(s, d) for s, d in redis.logs[shard] if s >= seq]  # XTRIM MINID: keeps its own
    return None


def _part(redis: SimLog, shard: int, data: bytes, offset: int, try_id: str) -> str | None:
    """A part of the snapshot's one piece (``PIECE_BYTES``: never more here)."""
    if offset == 0:
        redis.staging[shard] = (try_id, data)  # SET: whatever an earlier try left is replaced, its id too
        return None
    refusal = _offset_refusal(redis, shard, offset, try_id)
    if refusal is None:
        redis.staging[shard] = (try_id, redis.staging[shard][1] + data)
    return refusal


def _offset_refusal(redis: SimLog, shard: int, offset: int, try_id: str) -> str | None:
    held_by, held = redis.staging.get(shard, (None, b""))
    if held_by != try_id:
        return f"PARTS_LOST staging holds the parts of another try ({held_by}), not of {try_id}"
    return None if len(held) == offset else f"PARTS_LOST staging holds {len(held)} bytes, not {offset}"


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
        """``Nodes.run``: reservation id claims (``ids.SimIdClaims``), where several processes share the keyspace."""
        return await self.redis.ids.run(self.proc, calls)

    async def run_one(self, call: Call, extra_s: float = 0.0) -> Any:
        await (self.proc.write_turn() if self.proc is not None else self.redis.write_turn())
        redis, unit = self.redis, ScriptCall(call, self.proc)
        faults, whole = redis.faults, call.script is WHOLE_SCRIPT
        if faults is not None and faults.random() < EARLIER_FIRST_P:
            arrive_earlier(redis, unit.shard)
        if faults is not None and not whole and faults.random() < STAGING_LOST_P:
            redis.tally.staging_lost += redis.staging.pop(unit.shard, None) is not None
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
