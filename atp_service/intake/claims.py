"""Taking over a dead consumer's pending entries (XAUTOCLAIM), with the dead letters of those found trimmed.

Redis 7's XAUTOCLAIM lists apart the pending entries it finds trimmed from the stream (idle or not)
and takes them out of the pending list itself: their dead letters (``TRIMMED_WHILE_PENDING``) are the
only trace left of them. Written by a command of the reader's own after the claim's reply, they were
lost with the reader killed in between (kill -9, an OOM kill) or refused by Redis (the dead-letter
key of another type): the entries gone with nothing said. So one script claims and writes them: Redis
runs it whole or not at all, and it refuses before claiming where the dead letters could not be
written. What a reply lost can still cost is the reader's count and log line of them
(``atp_dead_lettered_total``, ``ingest_dead_lettered``), never the dead letters.
"""

from __future__ import annotations

from typing import Any

from atp_service.intake.dead_letters import TRIMMED
from atp_service.intake.unread import as_bytes, made_again_key
from atp_service.storage.scripts import ACL_LUA

_CLAIM = ACL_LUA + """
-- KEYS: the input stream, the dead-letter stream, the group's made-again mark. ARGV: group, consumer, min idle
-- ms, start, count, the dead-letter stream's MAXLEN, then the dead letter's _reason, _field and _code.
-- Returns XAUTOCLAIM's reply: {cursor, {{id, {field, value, ...}}, ...}, {id of each entry found trimmed}},
-- then the mark (``again.py``: the entries claimed may be ones the group made again delivered again) or false.
local stream, dlq = KEYS[1], KEYS[2]
local kind = redis.call('TYPE', dlq)['ok']
if kind ~= 'none' and kind ~= 'stream' then  -- before the claim: its trimmed ids would go without a trace
  return redis.error_reply('WRONGTYPE dead-letter stream ' .. dlq .. ' holds a ' .. kind)
end
local refused = denied({{'XADD', dlq, 'MAXLEN', '~', '1', '*', 'f', 'v'}, {'GET', KEYS[3]}})  -- an ACL changed since
if refused then return refused end  -- the start: the trimmed ids gone, their dead letters refused (ACL_LUA)
local reply = redis.call('XAUTOCLAIM', stream, ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
for _, id in ipairs(reply[3] or {}) do  -- Redis 7: taken out of the pending list by the claim itself
  redis.call('XADD', dlq, 'MAXLEN', '~', ARGV[6], '*', '_reason', ARGV[7], '_field', ARGV[8], '_code', ARGV[9],
             '_stream', stream, '_id', id)
end
return {reply[1], reply[2], reply[3] or {}, redis.call('GET', KEYS[3])}
"""


class Claims:
    """XAUTOCLAIM on an input stream for one consumer of the group, trimmed entries dead-lettered in the
    same script."""

    def __init__(self, client: Any, group: str, consumer: str, dead_letter_stream: str, maxlen: int) -> None:
        self._client = client
        self._script: Any = None  # registered at the first claim
        self._group = group
        self._consumer = consumer
        self._dlq = dead_letter_stream
        self._maxlen = maxlen

    async def claim(self, stream: str, min_idle_ms: int, start: str, count: int
                    ) -> tuple[bytes, list[tuple[bytes, list[bytes]]], list[bytes], bytes | None]:
        """The cursor to go on from, the entries claimed (raw: id, flat fields), the ids of those
        found trimmed, each dead-lettered already, and the group's made-again mark (None: none)."""
        if self._script is None:
            self._script = self._client.register_script(_CLAIM)
        reply = await self._script(keys=[stream, self._dlq, made_again_key(stream, self._group)],
                                   args=[self._group, self._consumer, min_idle_ms, start, count, self._maxlen,
                                         TRIMMED.reason, TRIMMED.field, TRIMMED.code])
        mark = reply[3]
        return reply[0], reply[1], list(reply[2]), None if mark is None else as_bytes(mark)
