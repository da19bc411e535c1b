"""The keys of the shards' snapshots as the simulated Redis holds them, and the snapshot scripts of
``snapshot_parts.py`` run on them check for check as their Lua does.

Every key is held by its name, as the service's calls name it (``snap``, ``snap:<n>``, ``snap-pieces``,
``snap-parts``, ``snap-parts:<n>``, ``snap-parts-try``), with whether it carries a time to live (a staging
key does; SET without PX, and PERSIST, take it away; APPEND and RENAME keep it). A script runs on the KEYS
and ARGV of its call, each check in its Lua's order with the same error reply, and each write as the Lua
makes it: a RENAME of a missing key ends the script there with what it wrote kept, as Redis does.

Recovery reads them with the service's own code (``LogReads.load_snapshot``: the count in ``snap-pieces``,
then each key a part of ``reply_bytes`` at a time) over a client that answers at once; the checks read them
as that code does (``stored_bytes``). After every snapshot put in place, its layout is checked: every piece
``snap-pieces`` names is there and holds no time to live, none past them is left, and the bytes they hold
are a snapshot the service wrote, whole (``SimLog.torn``).
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import TYPE_CHECKING, Any

from atp_service.storage.keys import Keyspace
from atp_service.storage.log_reads import LogReads
from atp_service.storage.snapshot_parts import LAST_PART_SCRIPT, PART_SCRIPT, WHOLE_SCRIPT

if TYPE_CHECKING:
    from tests.sim.simlog import SimLog
    from tests.sim.snapparts import ScriptCall

Held = dict[str, tuple[bytes, bool]]
"""Key name -> (value, whether it carries a time to live)."""
ALL_EXPIRE_P = 0.5
"""Of staging keys lost while several pieces are staged: the chance all go (a long stall past their TTL)
rather than one (evicted under a volatile-* policy, or an earlier piece's TTL, not renewed by the parts of
the pieces after it, run out)."""
_GROUP = re.compile(r"\{g(\d+)\}")
_PIECE = re.compile(r":snap:(\d+)$")


def shard_of(key: str) -> int:
    match = _GROUP.search(key)
    assert match is not None, key
    return int(match[1])


def _get(held: Held, key: str) -> bytes | None:
    value = held.get(key)
    return None if value is None else value[0]


def _strlen(held: Held, key: str) -> int:
    return len(held[key][0]) if key in held else 0


def run_lua(redis: SimLog, unit: ScriptCall) -> str | None:
    """The call's script as Redis runs it: None when it did what it does, else its error reply (FENCED,
    STALE, GAP, PIECES, PARTS_LOST: nothing changed; ``ERR`` of a command: what it wrote before stays)."""
    call, shard, held = unit.call, unit.shard, redis.snapkeys
    keys, args = call.keys, call.args  # 0-based here: KEYS[i] of the Lua is keys[i - 1]
    owner = redis.owners[shard] if unit.proc is not None else redis.redis_epoch
    epoch, token = str(args[0]), int(args[3])
    if owner != epoch:  # FENCE_LUA: GET of a missing key is false in Lua
        return f"FENCED epoch {epoch} was replaced by {owner or 'false'}"
    if redis.fences[shard] > token:  # STALE_LUA
        return f"STALE shard fenced at {redis.fences[shard]}"
    if call.script is PART_SCRIPT:
        return _try_check(held, keys, args) or _part(held, keys, args)
    seq = int(args[2])
    if redis.newest_id(shard) < seq:  # LOG_REACHES_LUA
        return f"GAP snapshot of entry {seq} but the log ends at {redis.newest_id(shard)}"
    if call.script is LAST_PART_SCRIPT:
        refusal = _pieces_check(held, keys, args[8]) or _try_check(held, keys, args) or _last(held, keys, args)
    else:
        assert call.script is WHOLE_SCRIPT, call.script
        refusal = _pieces_check(held, keys, args[4]) or _whole(held, keys, args)
    if refusal is not None:
        return refusal
    redis.logs[shard] = [(s, d) for s, d in redis.logs[shard] if s >= seq]  # XTRIM MINID: keeps its own
    _check_layout(redis, shard, seq)
    redis.tally.snapshot_pieces += keys[3] in held
    return None


def _pieces_check(held: Held, keys: list[Any], named: Any) -> str | None:
    """``_pieces_check``: the call names as many stored pieces as ``snap-pieces`` (KEYS[4]; absent: one) holds."""
    stored = int(_get(held, keys[3]) or b"1")
    return None if stored == int(named) else f"PIECES {stored} keys hold the stored snapshot, not {named}"


def _try_check(held: Held, keys: list[Any], args: list[Any]) -> str | None:
    """``_TRY_CHECK``: a piece's first part follows the piece before of the same try (the try's very first,
    anything); the others extend exactly their piece's end, of the same try."""
    offset, piece, try_key = int(args[4]), int(args[6]), keys[-2]
    if offset > 0 or piece > 0:
        mine = f"{args[5]}:{piece - 1 if offset == 0 else piece}"
        if _get(held, try_key) != mine.encode():
            return (f"PARTS_LOST {try_key} holds the parts of another try or piece ({_get(held, try_key)!r}), "
                    f"not of {mine}")
        if offset > 0 and _strlen(held, keys[1]) != offset:
            return f"PARTS_LOST {keys[1]} holds {_strlen(held, keys[1])} bytes, not {offset}"
    return None


def _part(held: Held, keys: list[Any], args: list[Any]) -> None:
    """PART_SCRIPT's writes. KEYS: owner, the piece's staging key, the try and its piece, fence."""
    data, offset, try_id, piece = args[1], int(args[4]), str(args[5]), int(args[6])
    if offset == 0:  # SET ... PX: whatever an earlier try left is replaced
        held[keys[1]] = (bytes(data), True)
        held[keys[2]] = (f"{try_id}:{piece}".encode(), True)
        return
    held[keys[1]] = (held[keys[1]][0] + data, True)  # APPEND, PEXPIRE (the try check found it)
    held[keys[2]] = (held[keys[2]][0], True)  # PEXPIRE


def _last(held: Held, keys: list[Any], args: list[Any]) -> str | None:
    """LAST_PART_SCRIPT's check of the staged pieces, then its writes. KEYS: owner, the last piece's staging
    key, log, snap-pieces, the n staging keys, the max(n, stored) snapshot keys, the try, fence."""
    data, offset, piece_bytes = args[1], int(args[4]), int(args[7])
    n = int(args[6]) + 1
    m = max(n, int(args[8]))
    for i in range(1, n):
        if _strlen(held, keys[3 + i]) != piece_bytes:
            return f"PARTS_LOST {keys[3 + i]} holds {_strlen(held, keys[3 + i])} bytes, not a piece of {piece_bytes}"
    if offset == 0:
        held[keys[1]] = (bytes(data), False)  # SET: no time to live
    else:
        value, volatile = held.get(keys[1], (b"", False))
        held[keys[1]] = (value + data, volatile)  # APPEND keeps it
    for i in range(1, n + 1):
        source, target = keys[3 + i], keys[3 + n + i]
        if source not in held:
            return "ERR no such key"  # RENAME: the script ends here, what it did stays
        held[target] = (held.pop(source)[0], False)  # RENAME (its TTL kept), PERSIST
    for i in range(n + 1, m + 1):
        held.pop(keys[3 + n + i], None)
    if n > 1:
        held[keys[3]] = (str(n).encode(), False)
    else:
        held.pop(keys[3], None)
    held.pop(keys[-2], None)
    return None


def _whole(held: Held, keys: list[Any], args: list[Any]) -> None:
    """WHOLE_SCRIPT's writes. KEYS: owner, snapshot, log, snap-pieces, the stored snapshot's keys past the
    first, fence."""
    held[keys[1]] = (bytes(args[1]), False)
    for key in keys[4:-1]:
        held.pop(key, None)
    held.pop(keys[3], None)


def stored_bytes(held: Held, keys: Keyspace, shard: int) -> bytes | None:
    """The shard's snapshot as ``LogReads._snapshot_bytes`` reads it: ``snap-pieces`` keys from ``snap`` on
    (absent: ``snap`` alone). A piece it names missing: an assertion (recovery would find it gone at every
    try)."""
    count = _get(held, keys.snap_pieces(shard))
    if count is None:
        return _get(held, keys.snap(shard))
    pieces = [_get(held, keys.snap(shard, piece)) for piece in range(int(count))]
    assert all(pieces), f"shard {shard}: snap-pieces names {int(count)} keys, some are missing"
    return b"".join(piece for piece in pieces if piece)


def _check_layout(redis: SimLog, shard: int, seq: int) -> None:
    """The snapshot just put in place: whole, and a snapshot the service wrote; its keys persistent, none
    of an older one's left past them."""
    held, keys = redis.snapkeys, redis.keys
    count = int(_get(held, keys.snap_pieces(shard)) or b"1")
    named = [keys.snap(shard, piece) for piece in range(count)] + [keys.snap_pieces(shard)] * (count > 1)
    problems = [f"{key} is missing" for key in named if key not in held]
    problems += [f"{key} carries a time to live" for key in named if held.get(key, (b"", False))[1]]
    tag = keys.tag(shard)
    problems += [f"{key} is left of an older snapshot" for key in held
                 if key.startswith(tag) and (m := _PIECE.search(key)) is not None and int(m[1]) >= count]
    if problems:
        redis.torn.append(f"shard {shard}: the stored snapshot's keys: {'; '.join(problems)}")
        return
    data = stored_bytes(held, keys, shard) or b""
    if (shard, seq, hashlib.sha1(data).digest()) not in redis.snapshots_sent:
        redis.torn.append(f"shard {shard}: a snapshot of entry {seq} stored ({len(data)} bytes, {count} keys) is "
                          "none the service wrote (a mixture of parts, or parts of another try or piece)")


def lose_staging(redis: SimLog, shard: int, faults: random.Random) -> bool:
    """Staging keys of ``shard`` lost (their time to live: evicted, or expired in a long stall): the staged
    piece and its try's id together where one piece is staged; where several are, all of them or one."""
    held = redis.snapkeys
    volatile = sorted(key for key, (_, ttl) in held.items() if ttl and shard_of(key) == shard)
    if not volatile:
        return False
    one_piece = set(volatile) <= {redis.keys.snap_parts(shard), redis.keys.snap_parts_try(shard)}
    lost = volatile if one_piece or faults.random() < ALL_EXPIRE_P else [faults.choice(volatile)]
    for key in lost:
        del held[key]
    return True


def restore_shards(now: Held, then: Held, shards: set[int]) -> None:
    """``shards``' keys as ``then`` holds them (one node of a cluster back from older data)."""
    for key in [key for key in now if shard_of(key) in shards]:
        del now[key]
    now.update((key, value) for key, value in then.items() if shard_of(key) in shards)


class _Client:
    """The commands ``LogReads`` reads a snapshot with, answered at once from the held keys."""

    def __init__(self, held: Any) -> None:
        self.held = held  # a callable: the log's keys now (a restore replaces the dict)

    def pipeline(self, transaction: bool = False) -> _Pipeline:
        return _Pipeline(self)

    async def get(self, key: str) -> bytes | None:
        return _get(self.held(), key)

    async def getrange(self, key: str, start: int, end: int) -> bytes:
        return (_get(self.held(), key) or b"")[start:end + 1]

    async def strlen(self, key: str) -> int:
        return _strlen(self.held(), key)


class _Pipeline:
    def __init__(self, client: _Client) -> None:
        self._client, self._queued = client, list[Any]()

    async def __aenter__(self) -> _Pipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def get(self, key: str) -> None:
        self._queued.append(self._client.get(key))

    def getrange(self, key: str, start: int, end: int) -> None:
        self._queued.append(self._client.getrange(key, start, end))

    async def execute(self) -> list[Any]:
        return [await reply for reply in self._queued]


class SnapshotReads(LogReads):
    """Recovery's read of a snapshot (``LogReads.load_snapshot``, the service's code) over the held keys."""

    def __init__(self, redis: SimLog) -> None:
        self.client, self.keys, self.nodes = _Client(lambda: redis.snapkeys), redis.keys, None
        self.read: dict[int, Any] = {}
        """Per shard, the bytes its last read found (``load_snapshot`` decodes them): the checks' replays are
        kept while they are the same (``replaycache.py``)."""

    async def _snapshot_bytes(self, shard: int) -> Any:
        self.read[shard] = raw = await super()._snapshot_bytes(shard)
        return raw
