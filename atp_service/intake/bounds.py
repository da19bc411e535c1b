"""Where a consumer group made again starts, as what Redis holds now says: never past an entry it holds unsettled.

The reader's bounds (``unacked.Unacked``) rise on what Redis showed it: an entry read, an entry acknowledged, a pass
over its own pending list that found it empty. Redis back from older data (a restart from an older RDB or AOF, a
failover to a replica that lagged) no longer holds those writes: the entries read and acknowledged since its save are
pending again, or not delivered yet. A group then made again at the reader's bound (deleted since, by an operator or
another loss) started past them: never delivered again, never applied nor dead-lettered (E6, R7) — an input fact that
Redis holds, lost.

So a bound is used only while Redis holds the write that justifies it. Now and then (``tag``) the reader sends one
script that reads, per input stream, the group's last delivered entry and the oldest entry pending in the group (with
any consumer: another process's, one gone whose entries are not claimed yet — the group deleted loses them all), and
sets this consumer's token beside the stream (``bound_key``) to a value never used before: the bound kept under
that token is at most what the script read, so holding the token Redis holds the state it was read from. Every entry
delivered to the reader afterwards lowers every bound kept (``Unacked``), and the script that makes a group again
(``unread._MAKE``) starts it at the bound of the token Redis holds, or from the stream's start where Redis holds none
of those kept (none at all, an older run's, one forgotten here): entries acknowledged meanwhile come again, a
duplicate of no effect (E8).
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisClusterException, RedisError

from atp_service.intake.unacked import Unacked
from atp_service.intake.unread import STREAM_ID_LUA, as_bytes, made_again_key
from atp_service.storage.resp import as_text

log = logging.getLogger(__name__)

BOUND_KEPT_MS = 86_400_000
"""How long a consumer's token beside an input stream outlives its last tag: far past the reader's tags (twice per
``claim_idle_ms``), so a token expires only with its consumer gone (a leased one's address changed): bounded."""

_TAG = """
-- KEYS: the input streams, then this consumer's token beside each (``bound_key``). ARGV: group, consumer (named by
-- the keys), token, ms kept. Returns per stream {the group's last delivered entry, the oldest entry pending in the
-- group, with any consumer, or false, the stream's oldest entry, or false}, or false where the stream has no such
-- group; every token set to ARGV[3], read after. Any consumer's: the group deleted takes every pending list with it,
-- another process's as this one's. The oldest entry: those refused before it can come again in no group made again.
local group, token, kept = ARGV[1], ARGV[3], ARGV[4]
local n = #KEYS / 2
""" + STREAM_ID_LUA + """
local out = {}
for i = 1, n do
  out[i] = false
  if redis.call('EXISTS', KEYS[i]) == 1 then
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[i])) do
      if field(g, 'name') == group then
        local first = redis.call('XRANGE', KEYS[i], '-', '+', 'COUNT', 1)[1]
        out[i] = {field(g, 'last-delivered-id'), redis.call('XPENDING', KEYS[i], group)[2] or false,
                  first and first[1] or false}
      end
    end
  end
end
for i = 1, n do redis.call('SET', KEYS[n + i], token, 'PX', kept) end
return out
"""


def bound_key(stream: str, group: str, consumer: str) -> str:
    """``consumer``'s token beside ``stream`` (its hash tag): the value of its last tag (``tag``). Beside the group's
    made-again mark (``unread.made_again_key``): a group has no ':', so no group's mark is another's token."""
    return f"{made_again_key(stream, group)}:{consumer}"


async def tag(client: Any, streams: list[str], group: str, consumer: str, unacked: Unacked) -> None:
    """The reader's bounds now kept under a new token, which Redis holds from this script on (``_TAG``). Its answer
    lost (a timeout, a cancel), the bound is dropped: Redis may hold the token, and a group made again then starts
    from the stream's start."""
    token = unacked.tag_begun()
    try:
        got = await client.register_script(_TAG)(
            keys=[*streams, *(bound_key(stream, group, consumer) for stream in streams)],
            args=[group, consumer, token, BOUND_KEPT_MS])
    except BaseException:
        unacked.tag_failed(token)
        raise
    unacked.tag_answered(token, {stream: None if not one else (as_bytes(one[0]), None if one[1] is None else
                                                               as_bytes(one[1]))
                                 for stream, one in zip(streams, got, strict=True)},
                         {stream: None if not one or one[2] is None else as_bytes(one[2])
                          for stream, one in zip(streams, got, strict=True)})


async def tag_or_say(client: Any, streams: list[str], group: str, consumer: str, unacked: Unacked) -> None:
    """``tag``, its failure said and let go: a tag settles nothing, and one refused for good (the token key out of the
    Redis user's ACL, a Redis at ``maxmemory`` refusing its ``SET``) must not stop the reading of new entries — it
    failed the pass over the reader's own pending list, which the reading loop then ran again before any read, for
    ever. Without a token answered, a group made again starts from the stream's start (E8: duplicates of no effect)."""
    try:
        await tag(client, streams, group, consumer, unacked)
    except (RedisError, RedisClusterException, OSError) as exc:
        log.warning("input streams: the reader's tag of where a group made again starts failed: %s", exc,
                    extra={"event": "ingest_tag_failed", "error": str(exc)})


def start_again(stream: str, unacked: Unacked) -> tuple[list[tuple[bytes, bytes]], tuple[bytes, str] | None]:
    """Where a group made again may start (``Unacked.tagged``: per token, the bound), at the bound of the token Redis
    holds: after the newest entry this reader has seen there — the older ones were applied, or refused (E7 judged by a
    clock that has moved since), and must not be judged again (E8 aside) — or before the oldest it may hold
    unacknowledged, which the group deleted took out of its pending list. Told with that entry (its id, its fields'
    digest): the script making the group (``unread._MAKE``) uses no bound where the stream is not the one it was read
    in — gone, its ids short of it, or that id naming another entry or none that a trim or an XDEL took: made anew
    (deleted, written again), all of its entries are new to the reader, and a group after the bound would never deliver
    those up to it. One the producer wrote far ahead (an explicit id in µs) froze the stream's facts for good; one
    written again from low ids past it (a producer giving its own ids) lost those before it, nothing failing or pending.
    None read there: from the stream's start."""
    seen = unacked.seen_entry(stream)
    return ([] if seen is None else unacked.tagged(stream)), seen


def made_anew(stream: str, seen: tuple[bytes, str] | None, unacked: Unacked) -> None:
    """``stream`` found made anew where its group was made again (``unread._MAKE``): said, and the newest entry this
    reader read there forgotten — its ids name other entries now (``Unacked.made_anew``)."""
    log.warning("input stream %s was made anew: it no longer holds entry %s, the newest this reader had "
                "seen; all of its entries are read", stream, as_text(seen[0]) if seen else "?",
                extra={"event": "ingest_stream_made_anew", "stream": stream})
    unacked.made_anew(stream)
