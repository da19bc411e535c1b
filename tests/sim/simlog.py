"""An in-process stand-in for ``LogStore`` that the simulation drives: it lands, fails or loses writes.

Appends wait in ``pending`` until the driver pumps them with an outcome, like Redis would answer:
``ok`` (landed), ``lost`` (not landed, the caller told so), ``doubt`` (landed, but the caller
was told it failed — a timeout after Redis applied the script), ``late`` (the caller told it
failed now; the script reaches Redis at a later pump — after the caller's settle read, unless a
fence stopped it). Redis's checks are modelled as the append script makes them: an entry whose
shard was fenced after it was sent is refused (STALE), an entry must follow its stream's newest
(TAKEN / GAP), and a group (a cross-shard change) lands all or none. Everything ever landed is
also kept in ``history`` (never trimmed) for the reference checks.
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


class _Unit:
    """Entries sent together that share one answer (one entry, or a cross-shard group)."""

    __slots__ = ("done", "entries")

    def __init__(self, entries: list[tuple[int, int, bytes, int]], done: asyncio.Future[None]) -> None:
        self.entries, self.done = entries, done  # (shard, seq, data, fence token)


class SimLog:
    def __init__(self) -> None:
        self.logs: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        self.snaps: dict[int, bytes] = {}
        self.history: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        self.pending: list[_Unit] = []
        self.late: list[_Unit] = []  # sent, the caller told it failed, not yet arrived
        self.fences: dict[int, int] = defaultdict(int)  # Redis's fence per shard
        self.tokens: dict[int, int] = defaultdict(int)  # what this instance's writes carry
        self.client: Any = None  # nothing in the simulation writes side streams
        self.fenced = False  # one instance: never replaced
        self.late_landed = 0
        self.late_refused = 0

    # -- what ShardActor and Engine call -----------------------------------------------
    def submit(self, shard: int, seq: int, data: bytes) -> asyncio.Future[None]:
        return self.submit_group([(shard, seq, data)])

    def submit_group(self, entries: list[tuple[int, int, bytes]]) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append(_Unit([(sh, seq, data, self.tokens[sh]) for sh, seq, data in entries], fut))
        return fut

    async def load_fences(self, shards: int) -> None:
        for shard in range(shards):
            self.tokens[shard] = self.fences[shard]

    async def fence(self, shard: int) -> None:
        await asyncio.sleep(0)
        self.fences[shard] += 1
        self.tokens[shard] = self.fences[shard]

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
        self.logs[shard] = [(s, d) for s, d in self.logs[shard] if s >= seq]  # keeps its own entry
        return len(data)

    # -- what the driver calls -----------------------------------------------------------
    def pump(self, outcome: str) -> int:
        """Answer every append sent so far with one outcome (one script call). Late scripts of
        earlier pumps arrive first."""
        self.arrive_late()
        batch = [u for u in self.pending if not u.done.done()]  # cancelled before sending: never sent
        self.pending = []
        for unit in batch:
            if outcome == "late":
                self.late.append(unit)
                unit.done.set_exception(RedisError("sim: append timed out (still on its way)"))
                continue
            refusal = self._land(unit) if outcome != "lost" else None
            if outcome != "ok":
                unit.done.set_exception(RedisError(f"sim: append {outcome}"))
            elif refusal is not None:
                unit.done.set_exception(RedisError(f"sim: {refusal}"))
            else:
                unit.done.set_result(None)
        return len(batch)

    def arrive_late(self) -> None:
        """Scripts still on their way reach Redis now: landed, or refused by a fence."""
        late, self.late = self.late, []
        for unit in late:
            if self._land(unit) is None:
                self.late_landed += 1
            else:
                self.late_refused += 1

    def crash(self, land: bool) -> None:
        """The process dies: what was sent either all reached Redis or none of it did."""
        if land:
            self.arrive_late()
            for unit in self.pending:
                if not unit.done.done():
                    self._land(unit)
        self.pending, self.late = [], []

    def _last(self, shard: int) -> int:
        log = self.logs[shard]
        if log:
            return log[-1][0]
        snap = self.snaps.get(shard)
        return _decode(snap).seq if snap else 0

    def _refusal(self, shard: int, seq: int, token: int) -> str | None:
        if self.fences[shard] > token:
            return "STALE"
        last = self._last(shard)
        if seq <= last:
            return "TAKEN"
        if seq != last + 1:
            return "GAP"
        return None

    def _land(self, unit: _Unit) -> str | None:
        """Land a unit all or none, as the append script would; the refusal, if any."""
        for shard, seq, _, token in unit.entries:
            refusal = self._refusal(shard, seq, token)
            if refusal is not None:
                return refusal
        for shard, seq, data, _ in unit.entries:
            self.logs[shard].append((seq, data))
            self.history[shard].append((seq, data))
        return None
