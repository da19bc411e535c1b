"""A snapshot written in parts, so that Redis is never held for a whole shard's state at once, and
spread over several keys, so that no key outgrows Redis's largest string.

Redis runs one command at a time: a script that stores a shard's snapshot in one value answers
nothing else meanwhile, and a shard of ~2 M positions (~136 MB) held every shard's appends for
~1.7 s — near an append's timeout, past which its outcome is in doubt. Past ``part_bytes`` a
snapshot goes in parts to staging keys of its shard, each part its own call, checked like every
write (the owner's epoch; the shard's fence, R7). The last part moves the staging keys into place
and trims the log in one script: the snapshot Redis holds is always whole, the old one or the new
one, never a mixture.

Redis refuses a string past ``proto-max-bulk-len`` (512 MB by default), and a shard's snapshot may be
larger (~790 MB at the default bounds on positions and the dedupe window): stored in one key, its
every try failed and its log was never trimmed. A snapshot past ``piece_bytes`` is stored in pieces
of that size, ``snap``, ``snap:1``, ``snap:2``…, their count in ``snap-pieces`` (absent: one); each
piece is staged in its own key (``snap-parts``, ``snap-parts:1``…) and all move together. Every key of
a shard shares its hash tag: one slot of a Redis Cluster, one script. A snapshot an earlier version
stored in one key of any size is read as one piece until the next snapshot replaces it.

A part that finds its staging key shorter or longer than the parts before it left it (expired, or
written by an earlier try) fails the write, which the shard tries again later from the first part;
the fence it raises first (``Checkpoints``) refuses any part of the failed try still on its way.
Each try draws an id, which its first part stores beside the staging keys and every later part
checks, with the piece being written (``<id>:<piece>``, set as each piece is begun): Redis back from
older data (an older RDB, a failover to a replica that lagged) may hold an earlier try's parts exactly
as long as this try's, and a fence older than this try's token — the length check alone then joined
them into a snapshot of neither try, the log trimmed behind it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

from redis.exceptions import ResponseError

from atp_service.storage.keys import Keyspace
from atp_service.storage.nodes import Call, Nodes, Script
from atp_service.storage.records import checksummed, snapshot_header
from atp_service.storage.scripts import ACL_LUA, ALLOW_OOM, FENCE_LUA, LOG_REACHES_LUA, STALE_LUA

STAGING_TTL_MS = 600_000
"""A staging key left by a write that never finished (a crash, a lost owner) goes after this."""

PIECE_BYTES = 128 << 20
"""The most one key of a stored snapshot holds unless told otherwise (``ServiceConfig.snapshot_piece_bytes``)."""

# KEYS[2]: the staging key of the piece; KEYS[#KEYS - 1]: the try and its piece; ARGV[5]: offset in the piece,
# ARGV[6]: the try's id, ARGV[7]: the piece. A piece's first part follows the piece before of the same try (the
# try's very first, anything); the others extend exactly their piece's end, of the same try.
_TRY_CHECK = """
local offset, piece = tonumber(ARGV[5]), tonumber(ARGV[7])
if offset > 0 or piece > 0 then
  local mine = ARGV[6] .. ':' .. (offset == 0 and piece - 1 or piece)
  if redis.call('GET', KEYS[#KEYS - 1]) ~= mine then
    return redis.error_reply('PARTS_LOST ' .. KEYS[#KEYS - 1] .. ' holds the parts of another try or piece (' ..
      tostring(redis.call('GET', KEYS[#KEYS - 1])) .. '), not of ' .. mine)
  end
  if offset > 0 and redis.call('STRLEN', KEYS[2]) ~= offset then
    return redis.error_reply('PARTS_LOST ' .. KEYS[2] .. ' holds ' .. redis.call('STRLEN', KEYS[2]) ..
      ' bytes, not ' .. offset)
  end
end
"""


def _pieces_check(argv: int) -> str:
    """Lua refusing a snapshot's write named for another count of stored pieces than ``snap-pieces``
    (KEYS[4]) holds, ARGV[``argv``]: the script deletes the old pieces it names, and names only those."""
    return f"""
local stored = tonumber(redis.call('GET', KEYS[4]) or '1')
if stored ~= tonumber(ARGV[{argv}]) then
  return redis.error_reply('PIECES ' .. stored .. ' keys hold the stored snapshot, not ' .. ARGV[{argv}])
end
"""


# Parts go on a full Redis too (``ALLOW_OOM``): the last one's trim is what makes room.
# KEYS: owner, the piece's staging key, the try and its piece, fence; ARGV: epoch, part, staging TTL (ms),
# token, offset in the piece, the try's id, the piece. A piece's first part (offset 0) replaces whatever an
# earlier try left in its staging key, and records the piece begun beside the try's id.
PART_SCRIPT = Script(ALLOW_OOM + FENCE_LUA + STALE_LUA + _TRY_CHECK + """
if offset == 0 then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  redis.call('SET', KEYS[3], ARGV[6] .. ':' .. piece, 'PX', ARGV[3])
  return 'OK'
end
redis.call('APPEND', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 'OK'
""")

# KEYS: owner, the last piece's staging key, log, snap-pieces, the n staging keys, the max(n, stored)
# snapshot keys, the try and its piece, fence; ARGV: epoch, last part, the snapshot's seq, token, offset in
# the last piece, the try's id, the last piece (n - 1), piece size, the pieces stored now. Refused past the
# log's end as the whole write is, and where a staging key before the last is not a whole piece (expired).
# RENAME keeps the staging keys' TTL: the snapshot is made persistent again; the old snapshot's pieces past
# the new one's go. The log keeps the snapshot's own entry, as the whole write's trim does.
# Every command after its first write is asked of the ACL before it (``ACL_LUA``), on every key it runs it on: a
# PERSIST taken out of it while serving was refused after the RENAMEs, the new snapshot in place with the staging keys'
# time to live, the old one overwritten — both gone ten minutes later, the log trimmed behind them (R7); asked on the
# first piece's keys alone, a command an ACL selector allows on those only (``(+rename ~…:snap-parts ~…:snap)``) was
# refused at the next piece's, the first in place alone.
LAST_PART_SCRIPT = Script(ALLOW_OOM + ACL_LUA + FENCE_LUA + STALE_LUA + LOG_REACHES_LUA + _pieces_check(9) + _TRY_CHECK
                          + """
local n = piece + 1
local m = math.max(n, tonumber(ARGV[9]))
for i = 1, n - 1 do
  if redis.call('STRLEN', KEYS[4 + i]) ~= tonumber(ARGV[8]) then
    return redis.error_reply('PARTS_LOST ' .. KEYS[4 + i] .. ' holds ' .. redis.call('STRLEN', KEYS[4 + i]) ..
      ' bytes, not a piece of ' .. ARGV[8])
  end
end
local asked = {{'DEL', KEYS[4]}, {'SET', KEYS[4], '1'}, {'DEL', KEYS[#KEYS - 1]}, {'XTRIM', KEYS[3], 'MINID', '0-0'}}
for i = 1, n do
  asked[#asked + 1] = {'RENAME', KEYS[4 + i], KEYS[4 + n + i]}
  asked[#asked + 1] = {'PERSIST', KEYS[4 + n + i]}
end
for i = n + 1, m do asked[#asked + 1] = {'DEL', KEYS[4 + n + i]} end
local refused = denied(asked)
if refused then return refused end
if offset == 0 then redis.call('SET', KEYS[2], ARGV[2]) else redis.call('APPEND', KEYS[2], ARGV[2]) end
for i = 1, n do
  redis.call('RENAME', KEYS[4 + i], KEYS[4 + n + i])
  redis.call('PERSIST', KEYS[4 + n + i])
end
for i = n + 1, m do
  redis.call('DEL', KEYS[4 + n + i])
end
if n > 1 then redis.call('SET', KEYS[4], n) else redis.call('DEL', KEYS[4]) end
redis.call('DEL', KEYS[#KEYS - 1])
redis.call('XTRIM', KEYS[3], 'MINID', ARGV[3] .. '-0')
return 'OK'
""")

# A snapshot in one call. KEYS: owner, snapshot, log, snap-pieces, the stored snapshot's keys past the first,
# fence; ARGV: epoch, snapshot data, the snapshot's seq, fence token, the pieces stored now.
# The log keeps the snapshot's own entry (MINID seq, not seq + 1): the append script checks each
# entry against the newest one, so the stream must never be left empty.
WHOLE_SCRIPT = Script(ALLOW_OOM + ACL_LUA + FENCE_LUA + STALE_LUA + LOG_REACHES_LUA + _pieces_check(5) + """
local asked = {{'DEL', KEYS[4]}, {'XTRIM', KEYS[3], 'MINID', '0-0'}}  -- after the SET (ACL_LUA), on each key
for i = 5, #KEYS - 1 do asked[#asked + 1] = {'DEL', KEYS[i]} end
local refused = denied(asked)
if refused then return refused end
redis.call('SET', KEYS[2], ARGV[2])
for i = 5, #KEYS - 1 do
  redis.call('DEL', KEYS[i])
end
redis.call('DEL', KEYS[4])
redis.call('XTRIM', KEYS[3], 'MINID', ARGV[3] .. '-0')
return 'OK'
""")


class _Snapshot:
    """One snapshot's write: its bytes (``header`` then ``data``), its shard's keys, its fencing."""

    def __init__(self, nodes: Nodes, keys: Keyspace, shard: int, seq: int, fencing: tuple[str, int]) -> None:
        self.nodes, self.keys, self.shard, self.seq, self.fencing = nodes, keys, shard, seq, fencing

    async def placed(self, calls: Callable[[int], Call], stored: int, extra_s: float) -> None:
        """Run the call that puts the snapshot in place, named for ``stored`` keys holding the old one; once more
        where Redis holds it in another count of keys (not written by this process: a start, a group taken over;
        nothing changed), named for those."""
        try:
            await self.nodes.run_one(calls(stored), extra_s)
        except ResponseError as exc:
            match = _PIECES.match(str(exc))
            if match is None:
                raise
            await self.nodes.run_one(calls(int(match[1])), extra_s)

    def whole(self, stored_bytes: bytes) -> Callable[[int], Call]:
        keys, shard = self.keys, self.shard
        epoch, token = self.fencing

        def call(stored: int) -> Call:
            old = [keys.snap(shard, piece) for piece in range(1, stored)]
            return Call(WHOLE_SCRIPT, [keys.owner(shard), keys.snap(shard), keys.log(shard), keys.snap_pieces(shard),
                                       *old, keys.fence(shard)], [epoch, stored_bytes, self.seq, token, stored])
        return call

    def last(self, part: bytes, offset: int, try_id: str, pieces: int, piece_bytes: int) -> Callable[[int], Call]:
        keys, shard = self.keys, self.shard
        epoch, token = self.fencing
        staging = [keys.snap_parts(shard, piece) for piece in range(pieces)]

        def call(stored: int) -> Call:
            into = [keys.snap(shard, piece) for piece in range(max(pieces, stored))]
            return Call(LAST_PART_SCRIPT, [keys.owner(shard), staging[-1], keys.log(shard), keys.snap_pieces(shard),
                                           *staging, *into, keys.snap_parts_try(shard), keys.fence(shard)],
                        [epoch, part, self.seq, token, offset, try_id, pieces - 1, piece_bytes, stored])
        return call


_PIECES = re.compile(r"PIECES (\d+) ")


async def write_snapshot_in_parts(nodes: Nodes, keys: Keyspace, shard: int, seq: int, data: bytes,
                                  fencing: tuple[str, int], part_bytes: int, extra_s: float,
                                  piece_bytes: int = PIECE_BYTES) -> None:
    """Store ``data`` as ``shard``'s snapshot at ``seq``, its header first (``snapshot_header``: the
    checksum of all of ``data``, whatever the parts), and trim its log behind it; ``fencing`` is
    (epoch, token); ``part_bytes`` 0: in one call while it fits one key. Past ``piece_bytes`` it is
    spread over keys of that size (parts never cross a piece: at most ``piece_bytes`` each). Each call
    is allowed its share of ``extra_s`` beyond the socket timeout. Raises what a call ended in: a
    part's failure leaves the stored snapshot as it was."""
    header = await checksummed(snapshot_header, data)
    size, piece_bytes = len(header) + len(data), max(piece_bytes, 1)
    part_bytes = min(part_bytes, piece_bytes) if part_bytes > 0 else piece_bytes
    pieces = -(-size // piece_bytes)
    write = _Snapshot(nodes, keys, shard, seq, fencing)
    if size <= part_bytes:
        # The old snapshot is taken to be in one key, as this one (sent again, named for its own, otherwise).
        await write.placed(write.whole(header + data), pieces, extra_s)
        return
    epoch, token = fencing
    try_key, per_byte_s = keys.snap_parts_try(shard), extra_s / size
    try_id = secrets.token_hex(8)  # this try's parts, and no other's, make the snapshot
    *parts, (last_at, _) = _parts(size, part_bytes, piece_bytes)
    for start, end in parts:
        piece = start // piece_bytes
        part = _stored_bytes(header, data, start, end)
        await nodes.run_one(Call(PART_SCRIPT, [keys.owner(shard), keys.snap_parts(shard, piece), try_key,
                                               keys.fence(shard)],
                                 [epoch, part, STAGING_TTL_MS, token, start - piece * piece_bytes, try_id, piece]),
                            per_byte_s * len(part))
    last = _stored_bytes(header, data, last_at, size)
    # The old snapshot is taken to be in as many keys as this one (sent again, named for its own, otherwise).
    calls = write.last(last, last_at - (pieces - 1) * piece_bytes, try_id, pieces, piece_bytes)
    await write.placed(calls, pieces, per_byte_s * len(last))


def _parts(size: int, part_bytes: int, piece_bytes: int) -> list[tuple[int, int]]:
    """The (start, end) of each part of ``size`` bytes: at most ``part_bytes`` each, none across a piece's end."""
    return [(at, min(at + part_bytes, piece_end, size))
            for piece_at in range(0, size, piece_bytes) for piece_end in (piece_at + piece_bytes,)
            for at in range(piece_at, min(piece_end, size), part_bytes)]


def _stored_bytes(header: bytes, data: bytes, start: int, end: int) -> bytes:
    """Bytes ``start:end`` of ``header + data`` without copying ``data`` whole (a large snapshot's
    copy held the loop as long as its checksum did)."""
    view, at = memoryview(data), len(header)
    if start >= at:
        return bytes(view[start - at:end - at])
    return header[start:end] + view[:max(end - at, 0)]


__all__ = ["PIECE_BYTES", "STAGING_TTL_MS", "write_snapshot_in_parts"]
