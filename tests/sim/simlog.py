"""An in-process stand-in for ``LogStore`` that the simulation drives: it lands, fails or loses writes.

Appends wait in ``pending`` until the driver pumps them with an outcome, like Redis would answer:
``ok`` (landed), ``lost`` (not landed, the caller told so), ``doubt`` (landed, but the caller
was told it failed — a timeout after Redis applied the script). A script is atomic: one pump
decides all the entries sent together. Everything ever landed is also kept in ``history``
(never trimmed) for the reference checks.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from redis.exceptions import RedisError

from atp_service.log import SnapshotRecord
from reservation import LedgerSnapshot

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(SnapshotRecord).decode


class GapError(AssertionError):
    """A shard tried to append an entry that is not the next one: its log would have a hole."""


class SimLog:
    def __init__(self) -> None:
        self.logs: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        self.snaps: dict[int, bytes] = {}
        self.history: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        self.pending: list[tuple[int, int, bytes, asyncio.Future[None]]] = []
        self.atomic_outcome = "ok"
        self.client: Any = None  # nothing in the simulation writes side streams
        self.fenced = False  # one instance: never replaced

    # -- what ShardActor and Engine call -----------------------------------------------
    def submit(self, shard: int, seq: int, data: bytes) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((shard, seq, data, fut))
        return fut

    async def append_atomic(self, entries: dict[int, tuple[int, bytes]]) -> None:
        await asyncio.sleep(0)
        outcome = self.atomic_outcome
        if outcome != "lost":
            for shard, (seq, data) in entries.items():
                self._land(shard, seq, data)
        if outcome != "ok":
            raise RedisError(f"sim: atomic append {outcome}")

    async def last_seq(self, shard: int) -> int:
        return self._last(shard)

    async def still_owner(self) -> bool:
        return True  # one instance: never replaced

    async def entries_after(self, shard: int, seq: int) -> AsyncIterator[tuple[int, bytes]]:
        for entry_seq, data in list(self.logs[shard]):
            if entry_seq > seq:
                yield entry_seq, data

    async def load_snapshot(self, shard: int) -> SnapshotRecord | None:
        raw = self.snaps.get(shard)
        return _decode(raw) if raw else None

    async def save_snapshot(self, shard: int, seq: int, ledger: LedgerSnapshot) -> int:
        data = _encode(SnapshotRecord(seq, ledger))  # through msgpack, as in Redis
        self.snaps[shard] = data
        self.logs[shard] = [(s, d) for s, d in self.logs[shard] if s > seq]
        return len(data)

    # -- what the driver calls -----------------------------------------------------------
    def pump(self, outcome: str) -> int:
        """Answer every append sent so far with one outcome (one script call)."""
        batch = [p for p in self.pending if not p[3].done()]  # cancelled before sending: never sent
        self.pending = []
        for shard, seq, data, fut in batch:
            if outcome != "lost":
                self._land(shard, seq, data)
            if outcome == "ok":
                fut.set_result(None)
            else:
                fut.set_exception(RedisError(f"sim: append {outcome}"))
        return len(batch)

    def crash(self, land: bool) -> None:
        """The process dies: what was sent either all reached Redis or none of it did."""
        for shard, seq, data, fut in self.pending:
            if land and not fut.done():
                self._land(shard, seq, data)
        self.pending = []

    def _last(self, shard: int) -> int:
        log = self.logs[shard]
        if log:
            return log[-1][0]
        snap = self.snaps.get(shard)
        return _decode(snap).seq if snap else 0

    def _land(self, shard: int, seq: int, data: bytes) -> None:
        last = self._last(shard)
        if seq <= last:
            raise RedisError("sim: ERR The ID specified in XADD is equal or smaller than the target stream top item")
        if seq != last + 1:
            raise GapError(f"shard {shard}: entry {seq} appended after {last}")
        self.logs[shard].append((seq, data))
        self.history[shard].append((seq, data))
