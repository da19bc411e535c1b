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
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from redis.exceptions import ResponseError

from atp_service.logs import noted_now_and_then
from atp_service.storage.channel_script import (
    WRITE_SCRIPT,
    StreamLost,
    WriteRefused,
    refusal_of,
    write_failure_reason,
    wrong_type_key,
)
from atp_service.storage.channel_wire import STATE_SEP, follows_of, follows_on, from_fields, script_item, state_entry
from atp_service.storage.durability import SETTLE_LOG_EVERY_S
from atp_service.storage.hash_scan import HashScan
from atp_service.storage.keys import CHANNELS, Keyspace
from atp_service.storage.nodes import Call, Nodes, Script, open_nodes
from atp_service.storage.resp import as_text, seq_of, stream_entries, stream_info
from atp_service.storage.scripts import FENCE_SCRIPT, FORGET_RESTAMPS
from reservation import ChannelUpdate, Key, Published

__all__ = ["ChannelStore", "StreamLost", "WriteRefused", "settle_noted", "write_failure_reason", "wrong_type_key"]
log = logging.getLogger(__name__)
OnError = Callable[[BaseException, float], None]
"""What ``retry_until_done`` tells of a failed try: the error, the wait before the next."""

_encode = msgspec.msgpack.Encoder().encode

# KEYS: the owner key, the fence key; ARGV: this instance's epoch, the desk's token. Raises the fence
# above both the stored value and the token (Redis restarted from older data may hold one below it).
_FENCE = FENCE_SCRIPT
_FENCE_CALL = Script(_FENCE)

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

    async def load(self, channel: str) -> tuple[dict[Key, Published], int, int]:
        """The last published value per key, the newest version the channel ever had (in the
        stream, or of a key: the stream may have been trimmed or lost), and the newest id Redis had handed
        out in the stream (0: none; the start's marker checks it is still there, ``StartMarker.reached``),
        read after the hash: a loss between the two is in neither. The newest is kept while the
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
        reached = await self.last_version(channel)
        return published, max(newest, reached), reached

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
            await self.writer.run_one(Call(WRITE_SCRIPT, keys, args))
        except ResponseError as exc:
            refused = refusal_of(exc)
            if refused is None:
                raise
            raise refused from None

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
