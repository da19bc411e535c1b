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
"""

from __future__ import annotations

from atp_service.storage.keys import Keyspace
from atp_service.storage.nodes import Call, Nodes, Script
from atp_service.storage.scripts import ALLOW_OOM, FENCE_LUA, LOG_REACHES_LUA, SNAPSHOT_SCRIPT, STALE_LUA

STAGING_TTL_MS = 600_000
"""A staging key left by a write that never finished (a crash, a lost owner) goes after this."""

_OFFSET_CHECK = """
local offset = tonumber(ARGV[5])
if redis.call('STRLEN', KEYS[2]) ~= offset then
  return redis.error_reply('PARTS_LOST ' .. KEYS[2] .. ' holds ' .. redis.call('STRLEN', KEYS[2]) ..
    ' bytes, not ' .. offset)
end
"""

# Parts go on a full Redis too (``ALLOW_OOM``): the last one's trim is what makes room.
# KEYS: owner, staging, fence; ARGV: epoch, part, staging TTL (ms), token, offset. The
# first part (offset 0) replaces whatever an earlier try left; the others extend exactly its end.
PART_SCRIPT = Script(ALLOW_OOM + FENCE_LUA + STALE_LUA + """
if tonumber(ARGV[5]) == 0 then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  return 'OK'
end
""" + _OFFSET_CHECK + """
redis.call('APPEND', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 'OK'
""")

# KEYS: owner, staging, log, snapshot, fence; ARGV: epoch, last part, the snapshot's seq, token,
# offset. Refused past the log's end as SNAPSHOT_SCRIPT is. RENAME keeps the staging key's TTL: the
# snapshot is made persistent again. The log keeps the snapshot's own entry, as SNAPSHOT_SCRIPT's
# trim does.
LAST_PART_SCRIPT = Script(ALLOW_OOM + FENCE_LUA + STALE_LUA + LOG_REACHES_LUA + _OFFSET_CHECK + """
redis.call('APPEND', KEYS[2], ARGV[2])
redis.call('RENAME', KEYS[2], KEYS[4])
redis.call('PERSIST', KEYS[4])
redis.call('XTRIM', KEYS[3], 'MINID', ARGV[3] .. '-0')
return 'OK'
""")

WHOLE_SCRIPT = Script(SNAPSHOT_SCRIPT)


async def write_snapshot_in_parts(nodes: Nodes, keys: Keyspace, shard: int, seq: int, data: bytes,
                                  fencing: tuple[int, int], part_bytes: int, extra_s: float) -> None:
    """Store ``data`` as ``shard``'s snapshot at ``seq`` and trim its log behind it; ``fencing`` is
    (epoch, token). Each call is allowed its share of ``extra_s`` beyond the socket timeout. Raises
    what a call ended in: a part's failure leaves the stored snapshot as it was."""
    epoch, token = fencing
    owner, fence, snap, log = keys.owner(shard), keys.fence(shard), keys.snap(shard), keys.log(shard)
    if len(data) <= part_bytes:
        await nodes.run_one(Call(WHOLE_SCRIPT, [owner, snap, log, fence], [epoch, data, seq, token]), extra_s)
        return
    staging, per_byte_s = keys.snap_parts(shard), extra_s / len(data)
    view, offset = memoryview(data), 0
    while len(data) - offset > part_bytes:
        part = bytes(view[offset:offset + part_bytes])
        await nodes.run_one(Call(PART_SCRIPT, [owner, staging, fence],
                                 [epoch, part, STAGING_TTL_MS, token, offset]), per_byte_s * len(part))
        offset += len(part)
    last = bytes(view[offset:])
    await nodes.run_one(Call(LAST_PART_SCRIPT, [owner, staging, log, snap, fence],
                             [epoch, last, seq, token, offset]), per_byte_s * len(last))


__all__ = ["STAGING_TTL_MS", "write_snapshot_in_parts"]
