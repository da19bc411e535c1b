"""The fence of a reader's dead-letter writes: one in doubt lands nothing once the reader judges its entries again.

A dead-letter script (``dead_letters._WRITE``) whose answer was lost — a timeout: redis-py drops that connection, and
the script, sent, may still reach Redis (held in the network, a proxy, a retransmission) — is in doubt. The reader
reads its pending entries again on another connection, which Redis does not order with the dropped one: landing after
that read delivered an entry again and before the reader acknowledged it, the script found it pending to this consumer
still, and wrote its letter saying refused, acknowledged it and kept it refused, while the reader's judgement by a
clock moved on applied it (E7, E8). So every write carries the token this reader last set beside the first input
stream (``fence_key``), and lands nothing where Redis holds another. After a write in doubt the token is set anew
(``raised``) before any entry of it is judged again; then those entries Redis holds pending to this consumer no more
are let go (``landed``): the write landed before the fence, its letters stand. The token is set at the start too: a
write in doubt of a run before (the same consumer name) lands nothing in this one.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from atp_service.intake.entries import Entry, id_key
from atp_service.intake.unread import refused_key

FENCE_KEPT_MS = 86_400_000
"""How long a consumer's fence outlives its last setting: a reader sets it at its start and after each write in doubt;
gone (a consumer gone for good), a write finds no token and lands nothing, and the reader sets it again: bounded."""
DOUBTFUL_KEPT = 10_000
"""Entries of writes in doubt remembered until read again. Past it the oldest are forgotten, but for the newest id
forgotten per stream: an entry at or before it is taken for one of a write in doubt (checked, not judged unfenced)."""


def fence_key(stream: str, group: str, consumer: str) -> str:
    """``consumer``'s fence beside ``stream`` (the first input stream: its hash tag), beside the entries refused
    (``unread.refused_key``; no group holds ':', so no other group's key)."""
    return f"{refused_key(stream, group)}:fence:{consumer}"


class Fence:
    """The token a reader's dead-letter writes carry (``token``), set anew where owed, and the entries of writes in
    doubt."""

    def __init__(self, client: Any, key: str, group: str, consumer: str) -> None:
        self._client, self.key, self._group, self._consumer = client, key, group, consumer
        self._nonce, self._set = os.urandom(8).hex(), 0  # another reader's, a run before's: not ours
        self.token: bytes | None = None  # the token last set (None: none yet)
        self._owed = True
        self._doubtful: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._forgotten: dict[str, tuple[int, int]] = {}  # per stream, the newest id forgotten past DOUBTFUL_KEPT
        self._lock = asyncio.Lock()

    async def raised(self) -> bytes:
        """The token, set anew in Redis where owed (none set yet, a write in doubt since, or one refused with it). A
        setting whose answer was lost leaves it owed: set again with another token (one landing late fences this
        reader's writes: refused with the token in use, owed again)."""
        async with self._lock:
            if self._owed or self.token is None:
                self._set += 1
                token = f"{self._nonce}-{self._set}".encode()
                await self._client.set(self.key, token, px=FENCE_KEPT_MS)
                self.token, self._owed = token, False
            return self.token

    def doubt(self, entries: Iterable[tuple[str, bytes]]) -> None:
        """A write of ``entries``' dead letters in doubt: the fence owed before they are judged again."""
        self._owed = True
        for one in entries:
            self._doubtful[one] = None
        while len(self._doubtful) > DOUBTFUL_KEPT:
            (stream, entry_id), _ = self._doubtful.popitem(last=False)
            self._forgotten[stream] = max(self._forgotten.get(stream, (0, 0)), id_key(entry_id))

    def refused(self, token: bytes) -> None:
        """A write refused by the fence, Redis holding another token: where it carried the one in use, Redis lost it
        (gone, expired, back from older data) or a setting in doubt landed late — owed."""
        if token == self.token:
            self._owed = True

    async def landed(self, entries: list[Entry]) -> list[Entry]:
        """``entries`` but those of a write in doubt that Redis holds pending to this consumer no more, asked once the
        fence is set past that write: it landed before (its letters stand, the entries acknowledged), or they were
        delivered again elsewhere, whose reader judges them."""
        doubtful = [entry for entry in entries if entry[:2] in self._doubtful or self._past_forgotten(entry)]
        if not doubtful:
            return entries
        await self.raised()
        async with self._client.pipeline(transaction=False) as pipe:
            for stream, entry_id, _ in doubtful:
                pipe.xpending_range(stream, self._group, entry_id, entry_id, 1, self._consumer)
            replies = await pipe.execute()
        gone = {entry[:2] for entry, reply in zip(doubtful, replies, strict=True) if not reply}
        for entry in doubtful:
            self._doubtful.pop(entry[:2], None)
        return [entry for entry in entries if entry[:2] not in gone]

    def _past_forgotten(self, entry: Entry) -> bool:
        """Whether ``entry`` is at or before the newest entry of its stream forgotten past ``DOUBTFUL_KEPT``."""
        newest = self._forgotten.get(entry[0])
        return newest is not None and id_key(entry[1]) <= newest
