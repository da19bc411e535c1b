"""What recovery reads of a shard's log and snapshot (``LogStore`` writes them)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from redis.exceptions import RedisError

from atp_service.storage.keys import Keyspace
from atp_service.storage.records import SnapshotRecord, SnapshotUnreadable, checksummed, opened_snapshot
from atp_service.storage.resp import no_such_key, seq_of, stream_info

FIELD = b"e"
"""The stream field an entry's bytes are in."""

_snap_decoder = msgspec.msgpack.Decoder(SnapshotRecord)

REPLY_BYTES = 1 << 20
"""About the most a read of recovery asks of Redis in one reply (a snapshot's part, the log's entries): 50 ms
of reply at the 20 MB/s a snapshot's write is allowed (``ServiceConfig.snapshot_write_mb_per_s``)."""
_SEEN_AGAIN_BYTES = 64
"""The snapshot's first bytes, read again after its parts: its header (the checksum of all of it) and its seq."""


class SnapshotChanged(RedisError):
    """A snapshot read in parts changed meanwhile (Redis came back from older data): read it again. A
    storage error, not an unreadable snapshot: its parts joined would fail the checksum, refusing the start."""


class LogReads:
    """Reads through ``client`` (on a cluster it routes each by its key) of the keys ``keys`` names."""

    client: Any
    keys: Keyspace
    nodes: Any
    reply_bytes: int = REPLY_BYTES
    """A snapshot is read in parts of this size (0: whole, in one ``GET``), the log in replies of about as
    many bytes. Each reply is held to the socket timeout: a shard's snapshot of 136 MB read whole, or 2,000
    entries of a bulk load, took longer wherever Redis's replies came slower than 68 MB/s (2 s), at every
    try — a start waiting for Redis for ever, a group taken over given back at every taking — while the
    write of that snapshot was allowed its size at 20 MB/s."""

    async def values_of(self, names: list[str]) -> list[Any]:
        """The value of each key of ``names`` (None: absent): one MGET on one Redis, on a cluster one per slot."""
        values: list[Any] = await (self.client.mget(names) if self.nodes.together
                                   else self.client.mget_nonatomic(names))
        return values

    async def values_answered(self, names: list[str]) -> list[Any]:
        """``values_of``; on a cluster each node's keys read on their own, at once: a key of a node that did not
        answer has what its read ended in for value (one that answers is not held by one that hangs). Raises
        where no node answered."""
        if self.nodes.together or len(names) < 2:
            return await self.values_of(names)
        by_node: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            by_node.setdefault(self.client.get_node_from_key(name).name, []).append(i)
        reads = await asyncio.gather(*(self.values_of([names[i] for i in at]) for at in by_node.values()),
                                     return_exceptions=True)
        if all(isinstance(read, BaseException) for read in reads):
            raise next(read for read in reads if isinstance(read, BaseException))
        out: list[Any] = [None] * len(names)
        for at, read in zip(by_node.values(), reads, strict=True):
            for n, i in enumerate(at):
                out[i] = read if isinstance(read, BaseException) else read[n]
        return out

    async def log_begun(self, shard: int) -> bool:
        """Whether an entry was ever appended to ``shard``'s log (``Keyspace.log_begun``), trimmed or not."""
        return bool(await self.client.exists(self.keys.log_begun(shard)))

    async def last_seq(self, shard: int) -> int:
        """The newest entry ever written to ``shard``'s log, trimmed or not (0: the log does not exist)."""
        info = await stream_info(self.client, self.keys.log(shard))
        return 0 if info is None else seq_of(info["last-generated-id"])

    async def last_seqs(self, shards: list[int]) -> list[int]:
        """``last_seq`` of each of ``shards``, in one round trip (per node, on a cluster)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for shard in shards:
                pipe.xinfo_stream(self.keys.log(shard))
            infos: list[Any] = await pipe.execute(raise_on_error=False)
        newest = []
        for info in infos:
            if no_such_key(info):
                newest.append(0)
            elif isinstance(info, Exception):
                raise info
            else:
                newest.append(seq_of(info["last-generated-id"]))
        return newest

    def nodes_of(self, shards: list[int]) -> dict[str, list[int]]:
        """``shards`` by the node their log is on as the slot map says (one Redis: all on ``""``)."""
        if not self.nodes.cluster:
            return {"": list(shards)}
        by_node: dict[str, list[int]] = {}
        for shard in shards:
            by_node.setdefault(self.client.get_node_from_key(self.keys.log(shard)).name, []).append(shard)
        return by_node

    async def entry_at(self, shard: int, seq: int) -> bytes | None:
        """Entry ``seq`` of ``shard``'s log (None: not there, never written or trimmed)."""
        rows: Any = await self.client.xrange(self.keys.log(shard), min=f"{seq}-0", max=f"{seq}-0", count=1)
        return bytes(rows[0][1][FIELD]) if rows else None

    async def entries_after(self, shard: int, seq: int, chunk: int = 2000) -> AsyncIterator[tuple[int, bytes]]:
        """Entries after ``seq``, in order, up to ``chunk`` a reply — fewer where they are large: a reply holds
        about ``reply_bytes`` (at least one entry), its count learnt from the entries read so far, from one up."""
        start, count, key = f"({seq}-0" if seq else "-", 1, self.keys.log(shard)
        while True:
            rows: Any = await self.client.xrange(key, min=start, count=count)
            size = 0
            for entry_id, fields in rows:
                data = fields[FIELD]
                size += len(data)
                yield seq_of(entry_id), data
            if len(rows) < count:
                return
            start = "(" + rows[-1][0].decode()
            fits = count * self.reply_bytes // max(size, 1) if self.reply_bytes > 0 else chunk
            count = max(1, min(chunk, 2 * count, fits))

    async def load_snapshot(self, shard: int) -> SnapshotRecord | None:
        key = self.keys.snap(shard)
        raw = await self._snapshot_bytes(shard)
        if not raw:
            return None
        body = await checksummed(opened_snapshot, raw, shard, key)  # the other groups' shards go on meanwhile
        try:
            return _snap_decoder.decode(body)
        except msgspec.MsgspecError as exc:
            # Not a fault to retry: a snapshot written in another version's layout (see CHANGELOG), an
            # element more at the end included (a newer build's field: never served without it).
            raise SnapshotUnreadable(f"shard {shard}: the snapshot at {key} is not in this "
                                     f"version's layout ({exc}); start the version that wrote it, or restore "
                                     "Redis from a backup this version wrote") from None

    async def _snapshot_bytes(self, shard: int) -> Any:
        """The shard's snapshot (empty: none): its keys one after another (``snap``, then ``snap:1``… as many as
        ``snap-pieces`` says; absent, ``snap`` alone, as an earlier version stored every snapshot), each read a
        part of ``reply_bytes`` at a time (``GETRANGE``), as it was written (``snapshot_parts``): each call within
        the socket timeout; one smaller than a part is read in its first call, with the count of its keys.
        Nothing writes a snapshot while its shard is recovered; Redis back from older data meanwhile raises
        ``SnapshotChanged``."""
        key, count_key, part = self.keys.snap(shard), self.keys.snap_pieces(shard), self.reply_bytes
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.getrange(key, 0, part - 1) if part > 0 else pipe.get(key)
            pipe.get(count_key)
            first, count = await pipe.execute()
        if count is None:
            return await self._key_bytes(key, first)
        raw, head = bytearray(), b""
        for piece in range(int(count)):
            key = self.keys.snap(shard, piece)
            got = await self._key_bytes(key, first if piece == 0 else None)
            if piece == 0:  # its first bytes, of its first key (which may be shorter than they are)
                head = bytes(got[:_SEEN_AGAIN_BYTES])
            if not got:
                await self._check_unchanged(shard, count, head)
                # Not a change under the read but a key gone for good (deleted by hand, evicted): read again, it
                # would be missing at every try and the recovery never end.
                raise SnapshotUnreadable(f"shard {shard}: {key}, one of the {int(count)} keys {count_key} says the "
                                         "snapshot is in, is missing; restore Redis from a backup")
            raw += got
        await self._check_unchanged(shard, count, head)
        return raw

    async def _check_unchanged(self, shard: int, count: bytes, head: bytes) -> None:
        """Its count and ``head``, the first bytes of its first key (the header: the checksum of all its keys), as
        they were when the read began (``SnapshotChanged`` otherwise): Redis back from older data in as many keys
        meanwhile would otherwise join keys of two snapshots, failing the checksum."""
        count_key = self.keys.snap_pieces(shard)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.get(count_key)
            pipe.getrange(self.keys.snap(shard), 0, max(len(head), 1) - 1)
            count_now, now = await pipe.execute()
        if count_now != count or now[:len(head)] != head:
            raise SnapshotChanged(f"{count_key} or {self.keys.snap(shard)} changed while the snapshot was read")

    async def _key_bytes(self, key: str, first: bytes | None) -> Any:
        """The value of ``key`` (empty: absent), read a part of ``reply_bytes`` at a time; ``first``: its first
        part, read already (None: not yet)."""
        part = self.reply_bytes
        if part <= 0:
            return first if first is not None else await self.client.get(key)
        if first is None:
            first = await self.client.getrange(key, 0, part - 1)
        if len(first) < part:
            return first
        size = int(await self.client.strlen(key))
        if size < part:
            raise SnapshotChanged(f"{key} changed while it was read: {size} bytes after a part of {part}")
        raw = bytearray(size)
        raw[:part] = first
        for at in range(part, size, part):
            end = min(at + part, size)
            got: bytes = await self.client.getrange(key, at, end - 1)
            if len(got) != end - at:
                raise SnapshotChanged(f"{key} changed while it was read: {len(got)} bytes at {at}, not {end - at}")
            raw[at:end] = got
        seen = min(size, _SEEN_AGAIN_BYTES)
        if int(await self.client.strlen(key)) != size or await self.client.getrange(key, 0, seen - 1) != raw[:seen]:
            raise SnapshotChanged(f"{key} changed while it was read")
        return raw
