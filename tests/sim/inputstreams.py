"""``--input-streams``: Redis as the input-stream reader (``intake/ingest.py``) and the quarantine stream see it.

An in-process model of what the reader and ``FactDesk`` ask of Redis, answered at once (nothing sleeps): streams
with one consumer group each (the group's position, its pending list with each entry's consumer and delivery
count), and the scripts the reader runs, as their Lua does it — the read of new entries (``unread._READ``: no
entry is ever trimmed here, so no gap is crossed and nothing is owed), the group made (``XGROUP CREATE``,
``unread._MAKE_AFTER``), a read of this consumer's own pending entries (``XREADGROUP`` after ids), ``XACK``,
``XPENDING`` of one entry, and the quarantine script (``quarantine._ONCE``): a fact written once by its digest,
its input entry acknowledged in the same script only while pending to the consumer writing it.

Faults (``RedisFaults``, while a step runs): a pipeline or script call refused before Redis ran it (nothing
done), or its answer lost after Redis ran all of it or only its first commands (a pipeline is no transaction;
a script is all or nothing). Every acknowledgement is checked as Redis takes it: the entry's fact is durable
by then — applied in its shard log (landed), or its quarantine entry written (``Acknowledged.check``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_service.intake import quarantine, unread
from atp_service.intake.entries import id_key
from atp_service.intake.quarantine import _FIELDS, _PER_FACT

FAULT_P = 0.12
"""The chance that a call to Redis fails while faults are on, half of them after Redis ran (some of) it."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


@dataclass
class Group:
    last: bytes = b"0-0"  # the last entry delivered (``last-delivered-id``)
    pending: dict[bytes, list[Any]] = field(default_factory=dict)  # entry id -> [consumer, deliveries]


@dataclass
class Stream:
    entries: dict[bytes, list[bytes]] = field(default_factory=dict)  # in id order (ids only grow)
    groups: dict[str, Group] = field(default_factory=dict)


class RedisFaults:
    """Which calls fail (seeded); off outside a step's calls (the drain at a seed's end, Redis answering)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.active = rng, False
        self.counts: dict[str, int] = {}
        self.events: list[str] = []

    def draw(self, what: str, commands: int) -> tuple[str, int]:
        """("ok" | "refused" | "lost", how many commands Redis ran)."""
        if not self.active or self.rng.random() >= FAULT_P:
            return "ok", commands
        if self.rng.random() < 0.5:
            kind, ran = "refused", 0
        else:
            kind, ran = "lost", commands if self.rng.random() < 0.6 else self.rng.randint(0, commands)
        self.counts[f"{what} {kind}"] = self.counts.get(f"{what} {kind}", 0) + 1
        self.events.append(f"{what} {kind}{f' after {ran} of {commands}' if kind == 'lost' else ''}")
        return kind, ran


def _fail(kind: str) -> BaseException:
    return RedisConnectionError("connection refused (simulated)") if kind == "refused" else \
        RedisTimeoutError("answer lost (simulated)")


class SimStreams:
    """The Redis client the reader and the desk are given (one model of Redis behind both)."""

    def __init__(self, faults: RedisFaults, on_ack: Callable[[str, bytes], None]) -> None:
        self.redelivered = 0  # entries delivered again (a read of the consumer's own pending list)
        self.streams: dict[str, Stream] = {}
        self.written: dict[str, set[str]] = {}  # the quarantine script's sets of digests, by key
        self.faults, self.on_ack = faults, on_ack
        self.quarantined: list[tuple[str, dict[str, str], tuple[str, bytes] | None]] = []
        """Quarantine entries written: (stream, fields, the input entry named with it)."""
        self.acked: dict[tuple[str, bytes], int] = {}  # input entry -> acknowledgements that took it

    # -- the producer's side ----------------------------------------------------------------------
    def xadd(self, stream: str, entry_id: bytes, flat: list[bytes]) -> None:
        held = self.streams.setdefault(stream, Stream())
        assert not held.entries or id_key(entry_id) > id_key(next(reversed(held.entries)))
        held.entries[entry_id] = flat

    # -- what the service calls ---------------------------------------------------------------------
    def set_response_callback(self, *_: Any) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def time(self) -> tuple[int, int]:
        return 0, 0

    def register_script(self, source: str) -> Callable[..., Any]:
        run = {unread._READ: self._read_new, unread._ACK: lambda keys, args: None,
               unread._MAKE_AFTER: self._make_after}[source]

        async def call(keys: list[str], args: list[Any]) -> Any:
            await asyncio.sleep(0)
            kind, ran = self.faults.draw("read" if source == unread._READ else "script", 1)
            out = run(keys, args) if ran else None
            if kind != "ok":
                raise _fail(kind)
            return out

        return call

    async def execute_command(self, *args: Any) -> Any:
        await asyncio.sleep(0)
        assert args[0] == "XREADGROUP", args  # the reader's only plain command here: its own pending entries
        kind, ran = self.faults.draw("pending read", 1)
        out = self._read_pending(*args[1:]) if ran else None
        if kind != "ok":
            raise _fail(kind)
        return out

    async def xgroup_create(self, stream: str, group: str, id: Any = "0", mkstream: bool = False) -> None:
        await asyncio.sleep(0)
        self._create(stream, group, _id(id))

    async def xinfo_stream(self, stream: str) -> dict[str, Any]:
        held = self.streams.get(stream)
        if held is None:
            raise ResponseError("no such key")
        return {"last-generated-id": next(reversed(held.entries), b"0-0")}

    def pipeline(self, transaction: bool = False) -> Pipeline:
        return Pipeline(self)

    # -- Redis's side ---------------------------------------------------------------------------------
    def _create(self, stream: str, group: str, start: bytes) -> bool:
        held = self.streams.setdefault(stream, Stream())
        if group in held.groups:
            raise ResponseError("BUSYGROUP Consumer Group name already exists")
        held.groups[group] = Group(last=b"0-0" if start in (b"0", b"$") else start)
        return True

    def _make_after(self, keys: list[str], args: list[Any]) -> Any:
        return self._create(keys[0], _text(args[0]), _id(args[1]))

    def _group(self, stream: str, group: str) -> tuple[Stream, Group]:
        held = self.streams.get(stream)
        if held is None or group not in held.groups:
            raise ResponseError(f"NOGROUP No such key '{stream}' or consumer group '{group}'")
        return held, held.groups[group]

    def _read_new(self, keys: list[str], args: list[Any]) -> Any:
        streams, (group, consumer, count) = keys[:-1], (_text(args[0]), _text(args[1]), int(args[2]))
        reply, positions = [], []
        for stream in streams:
            held, mine = self._group(stream, group)
            rows = [[entry_id, list(flat)] for entry_id, flat in held.entries.items()
                    if id_key(entry_id) > id_key(mine.last)][:count]
            for entry_id, _ in rows:
                mine.pending[entry_id] = [consumer, 1]
            if rows:
                mine.last = rows[-1][0]
                reply.append([stream.encode(), rows])
            positions.append(mine.last)
        return [reply or None, [], positions]

    def _read_pending(self, *args: Any) -> Any:
        # GROUP g c COUNT n STREAMS s... id...
        group, consumer, count = _text(args[1]), _text(args[2]), int(args[4])
        rest = args[6:]
        streams, afters = rest[:len(rest) // 2], rest[len(rest) // 2:]
        reply = []
        for stream, after in zip(streams, afters, strict=True):
            held, mine = self._group(_text(stream), group)
            rows = []
            for entry_id, holder in mine.pending.items():  # in id order: delivered in id order
                if holder[0] == consumer and id_key(entry_id) > id_key(_id(after)) and len(rows) < count:
                    holder[1] += 1
                    self.redelivered += 1
                    flat = held.entries.get(entry_id)
                    rows.append([entry_id, None if flat is None else list(flat)])
            reply.append([_text(stream).encode(), sorted(rows, key=lambda row: id_key(row[0]))])
        return reply

    def xack(self, stream: str, group: str, *ids: bytes) -> int:
        _, mine = self._group(stream, group)
        n = 0
        for entry_id in ids:
            if mine.pending.pop(_id(entry_id), None) is not None:
                self.on_ack(stream, _id(entry_id))  # checked as Redis takes it
                self.acked[(stream, _id(entry_id))] = self.acked.get((stream, _id(entry_id)), 0) + 1
                n += 1
        return n

    def xpending_one(self, stream: str, group: str, entry_id: bytes, consumer: str) -> list[dict[str, Any]]:
        _, mine = self._group(stream, group)
        holder = mine.pending.get(_id(entry_id))
        if holder is None or holder[0] != consumer:
            return []
        return [{"message_id": _id(entry_id), "consumer": consumer.encode(), "times_delivered": holder[1]}]

    def quarantine_script(self, keys: list[str], args: list[Any]) -> list[int]:
        """``quarantine._ONCE``, as its Lua does it (atomic: nothing else runs meanwhile)."""
        stream, written_key, inputs = keys[0], keys[1], keys[2:]
        group, consumer = _text(args[1]), _text(args[2])
        written = self.written.setdefault(written_key, set())
        values, out = args[3:], []
        assert len(values) % _PER_FACT == 0
        for at in range(0, len(values), _PER_FACT):
            digest, index, entry_id = _text(values[at]), int(values[at + 1]), _id(values[at + 2])
            flat = values[at + 3:at + 3 + 2 * _FIELDS]
            ours, input_stream = True, inputs[index - 3] if index > 0 else None
            if input_stream is not None:
                try:
                    ours = bool(self.xpending_one(input_stream, group, entry_id, consumer))
                except ResponseError:
                    ours = True  # NOGROUP: pending nowhere, written as ever
            if digest in written:
                out.append(0)
            elif not ours:
                out.append(-1)
            else:
                fields = {_text(k): _text(v) for k, v in zip(flat[0::2], flat[1::2], strict=True)}
                self.quarantined.append((stream, fields, None if input_stream is None else (input_stream, entry_id)))
                written.add(digest)
                out.append(1)
            if input_stream is not None and ours:
                with contextlib.suppress(ResponseError):  # redis.pcall
                    self.xack(input_stream, group, entry_id)
        return out


class Pipeline:
    """``client.pipeline(transaction=False)``: commands sent together, each run in turn; the answers lost
    (or the connection refused) as ``RedisFaults`` draws — after all, some or none of them ran."""

    def __init__(self, redis: SimStreams) -> None:
        self._redis, self._queued = redis, list[tuple[str, Callable[[], Any]]]()

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def eval(self, script: str, numkeys: int, *rest: Any) -> None:
        assert script == quarantine._ONCE
        keys, args = [_text(k) for k in rest[:numkeys]], list(rest[numkeys:])
        self._queued.append(("quarantine", lambda: self._redis.quarantine_script(keys, args)))

    def xack(self, stream: str, group: str, *ids: bytes) -> None:
        self._queued.append(("ack", lambda: self._redis.xack(stream, group, *ids)))

    def xpending_range(self, stream: str, group: str, low: bytes, _high: bytes, _count: int, consumer: str) -> None:
        self._queued.append(("xpending", lambda: self._redis.xpending_one(stream, group, low, consumer)))

    async def execute(self) -> list[Any]:
        await asyncio.sleep(0)
        what = "+".join(sorted({name for name, _ in self._queued}))
        kind, ran = self._redis.faults.draw(what, len(self._queued))
        replies = [run() for _, run in self._queued[:ran]]
        if kind != "ok":
            raise _fail(kind)
        return replies
