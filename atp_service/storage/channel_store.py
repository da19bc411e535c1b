"""The Redis side of channel feeds.

Per channel two keys: the stream ``<prefix>{avail}:<channel>`` (one entry per published value, id
``<version>-0`` so a stream id *is* a version and readers resume with ``since_version``) and the
hash ``<prefix>{avail}:<channel>:state`` (field ``<sku>\t<location>``, value ``"<quantity> <version>
<event_time> <status>"``: the last published value of every key, written by the same script call as
the stream entry; a publisher behind the stream's trimming delivers from it). On restart the hash
says what was published, so only what changed meanwhile is published again (E11) and versions
continue above the newest (C3).

A write whose reply is lost or late is *in doubt*: its bytes may still reach Redis after the desk
gave up on them (R7). Before the desk reads what landed, it fences the write: ``fence`` raises
the channel writer's token ``<prefix>{avail}:fence``, and the write script refuses a write carrying
an older token, so nothing sent before the fence can land after it (C4).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from redis.exceptions import RedisError, ResponseError

from atp_service.logs import noted_now_and_then
from atp_service.storage.channel_wire import (
    FOLLOWS_ARG,
    LOCATION_ARG,
    MARKER_ARG,
    SKU_ARG,
    STATE_ARG,
    STATE_SEP,
    VERSION_ARG,
    follows_of,
    follows_on,
    from_fields,
    script_item,
    state_entry,
    xadd_arguments,
    xadd_marker_arguments,
)
from atp_service.storage.durability import SETTLE_LOG_EVERY_S, append_failure_reason
from atp_service.storage.hash_scan import HashScan
from atp_service.storage.keys import CHANNELS, Keyspace
from atp_service.storage.nodes import Call, Nodes, Script, open_nodes
from atp_service.storage.resp import as_text, seq_of, stream_entries, stream_info
from atp_service.storage.scripts import ACL_LUA, FENCE_LUA, FENCE_SCRIPT, FORGET_RESTAMPS, HANDED_OUT_LUA
from reservation import ChannelUpdate, Key, Published

log = logging.getLogger(__name__)
OnError = Callable[[BaseException, float], None]
"""What ``retry_until_done`` tells of a failed try: the error, the wait before the next."""

_encode = msgspec.msgpack.Encoder().encode

# Every key shares the channel feeds' hash tag (keys.py): one slot on a cluster.
# KEYS: the owner key, the fence key, then stream and state hash per channel; ARGV: this instance's
# epoch, the desk's fence token, then maxlen, channel, msgpack list of updates per channel. Fenced
# like the log (log.py): an instance replaced by a newer one publishes nothing more; and fenced
# again by the token: a write sent before the desk's last ``fence`` is refused (STALE), so a write
# in doubt cannot land after the desk settled it. Every check comes before the first change — each
# stream's newest id too (TAKEN: a version already in the stream; LOST: an entry following on from one the stream no
# longer holds, or a settle's marker linked above the newest id Redis handed out there, ``StreamLost``), and every
# key's type (KEYTYPE: a stream or state hash key holding another type, which
# would fail the script half-way, its streams written and its hashes not), and that the Redis user may still run
# each XADD and HSET on its key (DENIED, ``ACL_LUA``: an ACL taken away while serving refused the HSET after the XADDs
# landed, the desk took the versions found in the stream for published while the state hash kept the values before
# them, C4) — so a refused write changed nothing, in any channel: a refusal is never part of a landing.
# Numbers travel as strings: Lua 5.1 would print large ones in exponent form. ``published_at`` is
# Redis's clock when the entry was written: the moment the value became visible.
_WRITE = FENCE_LUA + ACL_LUA + HANDED_OUT_LUA + """
local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
if fence > tonumber(ARGV[2]) then
  return redis.error_reply('STALE channel writer token ' .. ARGV[2] .. ' was fenced by ' .. fence)
end
local n = (#KEYS - 2) / 2
local batches = {}
for k = 3, #KEYS do
  local kind, want = redis.call('TYPE', KEYS[k])['ok'], (k % 2 == 1) and 'stream' or 'hash'
  if kind ~= want and kind ~= 'none' then
    return redis.error_reply('KEYTYPE ' .. KEYS[k] .. ' holds a ' .. kind .. ', not a ' .. want .. ': nothing written')
  end
end
local writes = {}
for k = 3, #KEYS, 2 do
  writes[#writes + 1] = {'XADD', KEYS[k], 'MAXLEN', '~', '1', '1-0', 'f', 'v'}
  writes[#writes + 1] = {'HSET', KEYS[k + 1], 'f', 'v'}
end
local refused = denied(writes)
if refused then return refused end
for c = 0, n - 1 do
  local stream = KEYS[2 * c + 3]
  local items = cmsgpack.unpack(ARGV[3 * c + 5])
  local top = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  local newest = #top > 0 and #items > 0 and tonumber(string.match(top[1][1], '^%d+'))
  if newest and newest >= tonumber(items[1][$VERSION]) then
    return redis.error_reply('TAKEN ' .. stream .. ': version ' .. items[1][$VERSION] .. ' is not after ' .. top[1][1])
  end
  if newest and items[1][$FOLLOWS] == '' and newest + 1 < tonumber(items[1][$VERSION]) then
    return redis.error_reply('LOST ' .. stream .. ': version ' .. items[1][$VERSION] .. ' follows on from the one ' ..
                             'before it, and the stream ends at ' .. top[1][1])
  end
  local handed = newest and items[1][$MARKER] ~= '' and items[1][$STATE] ~= '' and handed_out(stream)  -- SETTLED
  if handed and tonumber(handed) < tonumber(items[1][$FOLLOWS]) then
    return redis.error_reply('LOST ' .. stream .. ': version ' .. items[1][$VERSION] .. ' follows ' ..
                             items[1][$FOLLOWS] .. ', and the stream ends at ' .. handed)
  end
  batches[c + 1] = items
end
local t = redis.call('TIME')
local now = t[1] .. string.format('%03d', math.floor(t[2] / 1000))
for c = 0, n - 1 do
  local stream, state = KEYS[2 * c + 3], KEYS[2 * c + 4]
  local maxlen, channel = ARGV[3 * c + 3], ARGV[3 * c + 4]
  local fields = {}
  for i, u in ipairs(batches[c + 1]) do
    if u[$FOLLOWS] == '' then
      redis.call('XADD', stream, 'MAXLEN', '~', maxlen, u[$VERSION] .. '-0', $XADD_FIELDS)
    elseif u[$MARKER] == '' then  -- a run's first entry: the version it follows (channel_wire.FOLLOWS)
      redis.call('XADD', stream, 'MAXLEN', '~', maxlen, u[$VERSION] .. '-0', $XADD_LINKED)
    else  -- a start's marker: no update, so nothing in the state hash (channel_wire.MARKER)
      redis.call('XADD', stream, 'MAXLEN', '~', maxlen, u[$VERSION] .. '-0', $XADD_MARKER)
    end
    if u[$MARKER] == '' then
      fields[#fields + 1] = u[$SKU] .. '$SEP' .. u[$LOCATION]
      fields[#fields + 1] = u[$STATE]
    end
    if #fields >= 1000 then
      redis.call('HSET', state, unpack(fields))
      fields = {}
    end
  end
  if #fields > 0 then
    redis.call('HSET', state, unpack(fields))
  end
end
return n
"""


def _with_layout(script: str) -> str:
    """The writer script with the entry layout of ``channel_wire`` filled in (not written out here)."""
    for name, value in (("$XADD_FIELDS", xadd_arguments("u")), ("$XADD_LINKED", xadd_arguments("u", follows=True)),
                        ("$XADD_MARKER", xadd_marker_arguments("u")), ("$MARKER", str(MARKER_ARG)),
                        ("$FOLLOWS", str(FOLLOWS_ARG)), ("$VERSION", str(VERSION_ARG)),
                        ("$SKU", str(SKU_ARG)), ("$LOCATION", str(LOCATION_ARG)), ("$STATE", str(STATE_ARG)),
                        ("$SEP", STATE_SEP)):
        script = script.replace(name, value)
    return script


_WRITE = _with_layout(_WRITE)
_WRITE_SCRIPT = Script(_WRITE)

# KEYS: the owner key, the fence key; ARGV: this instance's epoch, the desk's token. Raises the fence
# above both the stored value and the token (Redis restarted from older data may hold one below it).
_FENCE = FENCE_SCRIPT
_FENCE_CALL = Script(_FENCE)

_REFUSALS = ("FENCED", "STALE", "TAKEN", "KEYTYPE", "DENIED")


class StreamLost(Exception):
    """A channel stream no longer holds the version a write follows on from (LOST; nothing written): Redis came back
    from older data while the service ran. Written on unlinked, the next start's marker followed that write, and a
    reader that had read the lost versions crossed it untold, keeping values the restarted desk knows nothing of (C3,
    C4). No retry cures it: the desk stops and the service is restarted (R7); its start links to what Redis holds."""


class WriteRefused(RedisError):
    """The write script refused the whole write before changing anything (FENCED: a newer instance
    owns the keyspace; STALE: the desk fenced since this write was sent; TAKEN: a version is already
    in the stream; KEYTYPE: a channel's stream or state hash key holds another type, written by something
    else than the service: the desk's writes are refused until it is removed; DENIED: the Redis user may no
    longer run a command of it, its ACL changed while serving). Certain, unlike a
    timeout: nothing of it landed and nothing of it ever will."""


_KEYTYPE = re.compile(r"^KEYTYPE (.+) holds a \w+, not a (?:stream|hash): nothing written$", re.S)


def wrong_type_key(error: BaseException) -> str | None:
    """The key a KEYTYPE refusal names (None: not one)."""
    found = _KEYTYPE.match(str(error)) if isinstance(error, WriteRefused) else None
    return found[1] if found else None


def write_failure_reason(error: BaseException) -> str:
    """Why a channel write (or the fence of its settle) failed, one of ``metrics.APPEND_FAILURE_REASONS``,
    as for the log's appends: the script's FENCED refusal is ``fenced`` (a newer instance owns the
    keyspace), its STALE and TAKEN ``refused``; a full Redis ``out_of_memory``."""
    if isinstance(error, WriteRefused) and str(error).startswith("FENCED"):
        return "fenced"
    return append_failure_reason(error)


def settle_noted(channels: list[str], each: OnError) -> OnError:
    """The ``on_error`` of the desk's settle (``ChannelDesk._settle``): ``each`` told of every failed try,
    and the log of the first, then at most every ``SETTLE_LOG_EVERY_S``: the desk publishes nothing while
    it waits, and its retries say nothing else."""
    def note(exc: BaseException, wait_s: float) -> None:
        log.warning("channel publish in doubt not settled yet (%s): %s; trying again in %.2fs", ", ".join(channels),
                    exc, wait_s, extra={"event": "channel_settle_waiting", "channels": channels, "error": str(exc),
                                        "retry_s": round(wait_s, 2)})

    return noted_now_and_then(note, SETTLE_LOG_EVERY_S, each)


class ChannelStore:
    publishers_name_keys = True
    """Publishers may name keys in a channel's ``restamp`` hash (``restamps``), which the desk then looks at."""

    def __init__(self, client: Any, prefix: str, epoch: Callable[[], str], block_limit_ms: int | None = None,
                 writer: Nodes | None = None) -> None:
        """``block_limit_ms``: the longest a read waits for updates (``read_after``), under the client's
        socket timeout: a wait past it would end in a timeout on a healthy Redis. ``writer``: where the
        write and fence scripts go (the service's: on a cluster, and waiting for ``redis_wait_replicas``
        as the log's appends do); unset, on ``client`` (one Redis), acknowledged by the primary alone."""
        self.client = client
        self.block_limit_ms = block_limit_ms
        self.prefix = prefix
        self.keys = Keyspace(prefix)
        self._epoch = epoch  # this instance's claim on the channel feeds' group (LogStore.claim)
        # Through ``Nodes``, as the log: a write the replicas did not confirm is in doubt
        # (``NotReplicated``), settled by a fence they confirm. Acknowledged by the primary alone, a
        # failover lost it while the desk believed it published: the feed kept the value before it
        # (a stock-out never shown) until the key changed again (C4).
        self.writer = writer if writer is not None else Nodes(client)
        self.token: int | None = None
        """The fence token writes carry (None: not read yet; the first write reads it)."""

    @classmethod
    def open(cls, url: str, prefix: str, epoch: Callable[[], str], timeout_s: float, cluster: bool,
             waits: tuple[int, int]) -> ChannelStore:
        """The service's store: on one Redis or the cluster at ``url``, its writes acknowledged once
        ``waits`` (replicas, timeout ms: ``redis_wait_replicas``, ``redis_wait_timeout_ms``) hold, as
        the log's; a read waits at most half ``timeout_s`` for updates."""
        writer = open_nodes(url, timeout_s, cluster=cluster, wait_replicas=waits[0], wait_timeout_ms=waits[1])
        return cls(writer.reader, prefix, epoch, block_limit_ms=int(timeout_s * 500), writer=writer)

    async def aclose(self) -> None:
        """The write connections and ``client`` closed."""
        await self.writer.aclose()
        if self.writer.reader is not self.client:
            await self.client.aclose()

    def fence_key(self) -> str:
        """One for the desk: it is the only writer, and writes every channel in one script call."""
        return self.keys.fence(CHANNELS)

    async def fence(self) -> None:
        """Make every write sent so far unable to land from now on, and carry the new token in the
        writes that follow. After it returns, the streams hold all that will ever land of those
        writes. Raises like any command while Redis cannot be reached (a write pause delays it)."""
        try:
            self.token = int(await self.writer.run_one(Call(_FENCE_CALL, [self.keys.owner(CHANNELS), self.fence_key()],
                                                            [self._epoch(), self.token or 0])))
        except ResponseError as exc:
            if not str(exc).startswith("FENCED"):
                raise
            # A newer instance owns the keyspace: the epoch check refuses every write of ours already.

    def stream(self, channel: str) -> str:
        return self.keys.channel_stream(channel)

    def state_key(self, channel: str) -> str:
        return self.keys.channel_state(channel)

    async def load(self, channel: str) -> tuple[dict[Key, Published], int]:
        """The last published value per key, and the newest version the channel ever had (in the
        stream, or of a key: the stream may have been trimmed or lost). The newest is kept while the
        hash is read a page at a time, other work running between pages: a pass over every value
        after the read held the event loop for seconds at tens of millions of keys. The pages come on
        one connection (``HashScan``): a Redis restarted or failed over between two pages (the
        connection made again) has the hash read again from its start — a cursor kept across it passed
        over about a quarter of the keys, the desk took them for never published, and a key no longer
        curated there kept its old number at the destination (C1, C4)."""
        scan, key = HashScan(self.client), self.state_key(channel)
        try:
            while (read := await self._read_state(scan, key)) is None:
                log.warning("%s: Redis restarted or failed over while the channel's state hash was read (an HSCAN "
                            "cursor holds within one server's life); reading it again from its start", channel,
                            extra={"event": "channel_load_again", "channel": channel})
        finally:
            await scan.aclose()
        published, newest = read
        return published, max(newest, await self.last_version(channel))

    @staticmethod
    async def _read_state(scan: HashScan, key: str) -> tuple[dict[Key, Published], int] | None:
        """Every key of the state hash and its newest version, all of one server life; None: not so."""
        published: dict[Key, Published] = {}
        newest, cursor, life = 0, 0, 0
        while True:
            after, found, now = await scan.hscan(key, cursor, 10_000)
            if cursor and now != life:
                return None
            life, cursor = now, after
            for field, value in found.items():
                entry, pub = state_entry(field, value)
                published[entry] = pub
                if pub.version > newest:
                    newest = pub.version
            if not cursor:
                return published, newest

    async def restamps(self, channel: str) -> list[tuple[Key, int, Any, Any]]:
        """The keys publishers named in the channel's ``restamp`` hash (delivered at versions Redis lost):
        each key, the newest lost version named, and the raw field and value (to forget it by)."""
        named = []
        async for field, value in self.client.hscan_iter(self.keys.channel_restamp(channel), count=1000):
            # A value naming no version, or a field not UTF-8 (UnicodeDecodeError): no publisher's, no key named.
            with contextlib.suppress(ValueError):
                sku, _, location = as_text(field).partition(STATE_SEP)
                named.append(((sku, location), int(value), field, value))
        return named

    async def forget_restamps(self, channel: str, done: list[Any]) -> None:
        """Fields of the ``restamp`` hash forgotten (``done``: field, value, …), each only if it still names
        the version read: a publisher may have named a newer one since."""
        await self.client.eval(FORGET_RESTAMPS, 1, self.keys.channel_restamp(channel), *done)

    async def wrong_type(self, channel: str) -> str | None:
        """The first of ``channel``'s keys (its stream, its state hash) holding another type than the desk
        writes there, as the write script would refuse it (KEYTYPE); None: both writable."""
        for key, want in ((self.stream(channel), "stream"), (self.state_key(channel), "hash")):
            kind = as_text(await self.client.type(key))
            if kind not in (want, "none"):
                return key
        return None

    async def write(self, batches: Iterable[tuple[str, int, list[ChannelUpdate]]]) -> None:
        """Append updates of several channels and record them as published: one script call, so one
        round trip and one atomic step (a script runs alone in Redis), whatever the number of updates.
        ``WriteRefused``: certainly not written; any other error: in doubt until ``fence``."""
        keys: list[str] = [self.keys.owner(CHANNELS), self.fence_key()]
        args: list[Any] = [self._epoch(), 0]
        for channel, maxlen, updates in batches:
            if not updates:
                continue
            keys += [self.stream(channel), self.state_key(channel)]
            args += [maxlen, channel, _encode([script_item(u) for u in updates])]
        if len(keys) == 2:
            return
        if self.token is None:
            self.token = int(await self.client.get(self.fence_key()) or 0)
        args[1] = self.token
        try:
            await self.writer.run_one(Call(_WRITE_SCRIPT, keys, args))
        except ResponseError as exc:
            if str(exc).startswith(_REFUSALS):
                raise WriteRefused(str(exc)) from None
            if str(exc).startswith("LOST"):
                raise StreamLost(f"{exc}: Redis lost versions this service published (back from older data); the "
                                 "service stops to be restarted (R7)") from None
            raise

    async def _info(self, channel: str) -> dict[str, Any] | None:
        return await stream_info(self.client, self.stream(channel))

    async def last_version(self, channel: str) -> int:
        """Newest version ever written to the channel stream (0: none)."""
        info = await self._info(channel)
        return 0 if info is None else seq_of(info["last-generated-id"])

    async def missed_after(self, channel: str, version: int) -> bool:
        """True when the stream cannot be read on exactly after ``version``: trimming removed an
        update above it (the oldest entry left is above ``version`` and not the one after it: within a
        run ``version + 1``, across a start the run's first entry linked to ``version``, ``follows_on``),
        or the stream never reached it — a resume point seen on a Redis that lost its newest entries
        (a failover), or another keyspace's: read on from it, a watch would wait in silence until
        versions pass it, then skip every update up to it."""
        info = await self._info(channel)
        newest = 0 if info is None else seq_of(info["last-generated-id"])
        if version > newest:
            return True
        first = None if info is None else info.get("first-entry")
        if not first:
            return newest > version
        oldest = seq_of(first[0])
        return oldest > version and not follows_on(oldest, follows_of(first[1] or {}), version)

    async def read_after(self, channel: str, version: int, count: int,
                         block_ms: int | None) -> list[ChannelUpdate]:
        """Updates with a version above ``version``, oldest first (waits up to ``block_ms`` for one)."""
        if block_ms is not None and self.block_limit_ms is not None:
            block_ms = max(1, min(block_ms, self.block_limit_ms))
        reply = await self.client.xread({self.stream(channel): f"{version}-0"}, count=count, block=block_ms)
        return [from_fields(fields)
                for _, _, fields in stream_entries(reply)]
