"""A snapshot written in parts, so that Redis is never held for a whole shard's state at once.

Redis runs one command at a time: a script that stores a shard's snapshot in one value answers
nothing else meanwhile, and a shard of ~2 M positions (~136 MB) held every shard's appends for
~1.7 s — near an append's timeout, past which its outcome is in doubt. Past ``part_bytes`` a
snapshot goes in parts to a staging key of its shard, each part its own call, checked like every
write (the owner's epoch; the shard's fence, R7). The last part moves the staging key into place
and trims the log in one script: the snapshot Redis holds is always whole, the old one or the new
one, never a mixture.

A part that finds the staging key shorter or longer than the parts before it left it (expired, or
written by an earlier try) fails the write, which the shard tries again later from the first part;
the fence it raises first (``Checkpoints``) refuses any part of the failed try still on its way.
Each try draws an id, which its first part stores beside the staging key and every later part
checks: Redis back from older data (an older RDB, a failover to a replica that lagged) may hold an
earlier try's parts exactly as long as this try's, and a fence older than this try's token — the
length check alone then joined them into a snapshot of neither try, the log trimmed behind it.
"""

from __future__ import annotations

import secrets

from atp_service.storage.keys import Keyspace
from atp_service.storage.nodes import Call, Nodes, Script
from atp_service.storage.records import checksummed, snapshot_header
from atp_service.storage.scripts import ALLOW_OOM, FENCE_LUA, LOG_REACHES_LUA, SNAPSHOT_SCRIPT, STALE_LUA

STAGING_TTL_MS = 600_000
"""A staging key left by a write that never finished (a crash, a lost owner) goes after this."""

# KEYS[2]: staging; KEYS[#KEYS - 1]: the staging key's try id; ARGV[5]: offset, ARGV[6]: the try's id.
_OFFSET_CHECK = """
local offset = tonumber(ARGV[5])
if redis.call('GET', KEYS[#KEYS - 1]) ~= ARGV[6] then
  return redis.error_reply('PARTS_LOST ' .. KEYS[2] .. ' holds the parts of another try (' ..
    tostring(redis.call('GET', KEYS[#KEYS - 1])) .. '), not of ' .. ARGV[6])
end
if redis.call('STRLEN', KEYS[2]) ~= offset then
  return redis.error_reply('PARTS_LOST ' .. KEYS[2] .. ' holds ' .. redis.call('STRLEN', KEYS[2]) ..
    ' bytes, not ' .. offset)
end
"""

# Parts go on a full Redis too (``ALLOW_OOM``): the last one's trim is what makes room.
# KEYS: owner, staging, staging's try id, fence; ARGV: epoch, part, staging TTL (ms), token, offset,
# the try's id. The first part (offset 0) replaces whatever an earlier try left, its id with it; the
# others extend exactly its end, of the same try.
PART_SCRIPT = Script(ALLOW_OOM + FENCE_LUA + STALE_LUA + """
if tonumber(ARGV[5]) == 0 then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  redis.call('SET', KEYS[3], ARGV[6], 'PX', ARGV[3])
  return 'OK'
end
""" + _OFFSET_CHECK + """
redis.call('APPEND', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 'OK'
""")

# KEYS: owner, staging, log, snapshot, staging's try id, fence; ARGV: epoch, last part, the snapshot's
# seq, token, offset, the try's id. Refused past the log's end as SNAPSHOT_SCRIPT is. RENAME keeps the
# staging key's TTL: the snapshot is made persistent again. The log keeps the snapshot's own entry, as
# SNAPSHOT_SCRIPT's trim does.
LAST_PART_SCRIPT = Script(ALLOW_OOM + FENCE_LUA + STALE_LUA + LOG_REACHES_LUA + _OFFSET_CHECK + """
redis.call('APPEND', KEYS[2], ARGV[2])
redis.call('RENAME', KEYS[2], KEYS[4])
redis.call('PERSIST', KEYS[4])
redis.call('DEL', KEYS[5])
redis.call('XTRIM', KEYS[3], 'MINID', ARGV[3] .. '-0')
return 'OK'
""")

WHOLE_SCRIPT = Script(SNAPSHOT_SCRIPT)


async def write_snapshot_in_parts(nodes: Nodes, keys: Keyspace, shard: int, seq: int, data: bytes,
                                  fencing: tuple[str, int], part_bytes: int, extra_s: float) -> None:
    """Store ``data`` as ``shard``'s snapshot at ``seq``, its header first (``snapshot_header``: the
    checksum of all of ``data``, whatever the parts), and trim its log behind it; ``fencing`` is
    (epoch, token); ``part_bytes`` 0: in one call, whatever its size. Each call is allowed its share
    of ``extra_s`` beyond the socket timeout. Raises what a call ended in: a part's failure leaves the
    stored snapshot as it was."""
    epoch, token = fencing
    owner, fence, snap, log = keys.owner(shard), keys.fence(shard), keys.snap(shard), keys.log(shard)
    header = await checksummed(snapshot_header, data)
    size = len(header) + len(data)
    if part_bytes <= 0 or size <= part_bytes:  # 0: never in parts
        await nodes.run_one(Call(WHOLE_SCRIPT, [owner, snap, log, fence], [epoch, header + data, seq, token]), extra_s)
        return
    staging, try_key, per_byte_s = keys.snap_parts(shard), keys.snap_parts_try(shard), extra_s / size
    try_id = secrets.token_hex(8)  # this try's parts, and no other's, make the snapshot
    offset = 0
    while size - offset > part_bytes:
        part = _stored_bytes(header, data, offset, offset + part_bytes)
        await nodes.run_one(Call(PART_SCRIPT, [owner, staging, try_key, fence],
                                 [epoch, part, STAGING_TTL_MS, token, offset, try_id]), per_byte_s * len(part))
        offset += len(part)
    last = _stored_bytes(header, data, offset, size)
    await nodes.run_one(Call(LAST_PART_SCRIPT, [owner, staging, log, snap, try_key, fence],
                             [epoch, last, seq, token, offset, try_id]), per_byte_s * len(last))


def _stored_bytes(header: bytes, data: bytes, start: int, end: int) -> bytes:
    """Bytes ``start:end`` of ``header + data`` without copying ``data`` whole (a large snapshot's
    copy held the loop as long as its checksum did)."""
    view, at = memoryview(data), len(header)
    if start >= at:
        return bytes(view[start - at:end - at])
    return header[start:end] + view[:max(end - at, 0)]


__all__ = ["STAGING_TTL_MS", "write_snapshot_in_parts"]
