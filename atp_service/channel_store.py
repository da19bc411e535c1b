"""The Redis side of channel feeds.

Per channel two keys: the stream ``<prefix>avail:<channel>`` (one entry per published value, id
``<version>-0`` so a stream id *is* a version and readers resume with ``since_version``) and the
hash ``<prefix>avail:<channel>:state`` (the last published value of every key, written in the
same MULTI as the stream entry). On restart the hash says what was published, so only what
changed meanwhile is published again (E11) and versions continue above the newest (C3).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from reservation import ChannelUpdate, Key, Published, update_fields, update_from_fields

_encode = msgspec.msgpack.Encoder().encode
_decode_published = msgspec.msgpack.Decoder(Published).decode
_SEP = "\t"


def _field(key: Key) -> str:
    return f"{key[0]}{_SEP}{key[1]}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def version_of(stream_id: Any) -> int:
    return int(_text(stream_id).split("-", 1)[0])


class ChannelStore:
    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def stream(self, channel: str) -> str:
        return f"{self.prefix}avail:{channel}"

    def state_key(self, channel: str) -> str:
        return f"{self.prefix}avail:{channel}:state"

    async def load(self, channel: str) -> tuple[dict[Key, Published], int]:
        """The last published value per key, and the newest version the stream ever had."""
        published: dict[Key, Published] = {}
        async for field, value in self.client.hscan_iter(self.state_key(channel), count=10_000):
            sku, _, location = _text(field).partition(_SEP)
            published[(sku, location)] = _decode_published(value)
        version = max((p.version for p in published.values()), default=0)
        try:
            info = await self.client.xinfo_stream(self.stream(channel))
        except Exception as exc:
            if "no such key" not in str(exc).lower():
                raise
        else:
            version = max(version, version_of(info["last-generated-id"]))
        return published, version

    async def write(self, batches: Iterable[tuple[str, int, list[ChannelUpdate]]]) -> None:
        """Append updates of several channels and record them as published: one MULTI, one round trip."""
        pipe = self.client.pipeline(transaction=True)
        for channel, maxlen, updates in batches:
            if not updates:
                continue
            stream = self.stream(channel)
            for u in updates:
                pipe.xadd(stream, update_fields(u), id=f"{u.version}-0", maxlen=maxlen, approximate=True)
            pipe.hset(self.state_key(channel), mapping={
                _field(u.key): _encode(Published(u.quantity, u.version, u.event_time)) for u in updates
            })
        await pipe.execute()

    async def _info(self, channel: str) -> dict[str, Any] | None:
        try:
            info: dict[str, Any] = await self.client.xinfo_stream(self.stream(channel))
        except Exception as exc:
            if "no such key" in str(exc).lower():
                return None
            raise
        return info

    async def last_version(self, channel: str) -> int:
        """Newest version ever written to the channel stream (0: none)."""
        info = await self._info(channel)
        return 0 if info is None else version_of(info["last-generated-id"])

    async def missed_after(self, channel: str, version: int) -> bool:
        """True when trimming removed an update with a version above ``version``. Versions have no
        gaps, so that is: the oldest entry left is beyond ``version + 1``."""
        info = await self._info(channel)
        if info is None:
            return False
        first = info.get("first-entry")
        if not first:
            return version_of(info["last-generated-id"]) > version
        return version_of(first[0]) > version + 1

    async def read_after(self, channel: str, version: int, count: int,
                         block_ms: int | None) -> list[ChannelUpdate]:
        """Updates with a version above ``version``, oldest first (waits up to ``block_ms`` for one)."""
        reply = await self.client.xread({self.stream(channel): f"{version}-0"}, count=count, block=block_ms)
        out: list[ChannelUpdate] = []
        if isinstance(reply, dict):  # RESP3 map form
            reply = list(reply.items())
        for _, entries in reply or ():
            if entries and isinstance(entries[0], list) and entries[0] and isinstance(entries[0][0], list):
                entries = entries[0]
            for _, fields in entries:
                out.append(update_from_fields({_text(k): _text(v) for k, v in fields.items()}))
        return out
