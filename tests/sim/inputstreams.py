"""``--input-streams``: Redis as the input-stream readers (``intake/ingest.py``) and the quarantine stream see it.

An in-process model of what the readers and ``FactDesk`` ask of Redis, answered at once (nothing sleeps): streams with
one consumer group each (the group's position, its pending list with each entry's consumer, delivery count and
delivery time, by Redis's clock: the world's), and the scripts the readers run, as their Lua does it — the read of new
entries (``unread._READ``: the entries trimmed unread after the group's position counted owed in the consumer's hash
where a read crosses them, when the group's count of entries read is known; the group's made-again mark answered, and
forgotten once the group is at or past it with nothing pending up to it; ``unread._ACK``), the group made and deleted
(``inputgroups``: ``unread._MAKE``, its made-again mark set to the stream's newest id, or the one it has answered;
``XGROUP DESTROY``), a read of a consumer's own pending entries with the marks (``again._PENDING``: ``XREADGROUP``
after ids, each delivered again counted and its idle time reset — so too where its answer was lost after it ran),
``XACK`` (of whichever consumer holds the entry, 0 without the group: never an error, as Redis answers), ``XPENDING``
of one entry for one consumer, the claim (``claims._CLAIM``: ``XAUTOCLAIM`` as Redis 7.0 runs it, the mark answered:
``inputscripts.autoclaim``) and the quarantine script (``quarantine._ONCE``, ``inputscripts.quarantine_once``), the
dead letters' (``dead_letters._WRITE``, ``inputscripts.write_dead_letters``).
The producer's ``MAXLEN`` trims the oldest entries, pending ones too (a read of the pending list then answers ``[id,
nil]``; ``XAUTOCLAIM`` takes them out of it). Reply shapes checked against redis-server 7.0.

Faults (``RedisFaults``, while a step runs): a pipeline or script call refused before Redis ran it (nothing done), or
its answer lost after Redis ran all of it or only its first commands (a pipeline is no transaction; a script is all or
nothing); ``--tag-faults``: the reader's tag too, landing late, tokens lost (``inputtags``). Every acknowledgement
is checked as Redis takes it: its fact durable then — applied in its shard log, or its quarantine entry written.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

from atp_service.intake import again, bounds, claims, dead_letters, departed, runs, unread
from atp_service.intake.entries import id_key
from atp_service.storage.nodes import Call
from tests.sim import inputgroups, inputscripts, inputsweep
from tests.sim.inputgroups import MAKER, Group, Stream, _id
from tests.sim.inputletters import LateLetters
from tests.sim.inputpipeline import Pipeline, _fail, _text
from tests.sim.inputtags import TagFaults
from tests.sim.sidestreams import run_pipelined

FAULT_P = 0.12
"""The chance that a call to Redis fails while faults are on, half of them after Redis ran (some of) it."""


class RedisFaults:
    """Which calls fail (seeded); off outside a step's calls (the drain at a seed's end, Redis answering)."""

    def __init__(self, rng: random.Random, tags: random.Random | None = None) -> None:
        self.rng, self.active, self.tags = rng, False, tags  # the tag's own (``inputtags``; None: no tag faults)
        self.before: Callable[[], None] = lambda: None  # at each call, before Redis runs it (``TagFaults.calls``)
        self.counts: dict[str, int] = {}
        self.events: list[str] = []

    def draw(self, what: str, commands: int) -> tuple[str, int]:
        """("ok" | "refused" | "lost", how many commands Redis ran)."""
        self.before()
        if not self.active or self.rng.random() >= FAULT_P:
            return "ok", commands
        if self.rng.random() < 0.5:
            kind, ran = "refused", 0
        else:
            kind, ran = "lost", commands if self.rng.random() < 0.6 else self.rng.randint(0, commands)
        self.counts[f"{what} {kind}"] = self.counts.get(f"{what} {kind}", 0) + 1
        self.events.append(f"{what} {kind}{f' after {ran} of {commands}' if kind == 'lost' else ''}")
        return kind, ran


class SimStreams:
    """The Redis client the reader and the desk are given (one model of Redis behind both)."""

    def __init__(self, faults: RedisFaults, on_ack: Callable[[str, bytes], None], now_ms: Callable[[], int]) -> None:
        self.redelivered = 0  # entries delivered again (a read of the consumer's own pending list)
        self.claimed = 0  # entries another consumer took over (``XAUTOCLAIM``)
        self.now_ms = now_ms  # Redis's clock: idle times
        self.streams: dict[str, Stream] = {}
        self.written: dict[str, dict[str, int]] = {}  # the quarantine script's sets: digest -> written at (ms)
        self.named_ahead: dict[str, dict[str, bytes]] = {}  # its hashes: digest -> an entry whose id ran ahead
        self.refused: dict[str, dict[str, bytes]] = {}  # refused sets and their letters (E7): id -> letter, why
        self.faults, self.on_ack = faults, on_ack
        self.tags = TagFaults(faults.tags)
        self.letters = LateLetters()  # ``--late-letters``: dead letters' scripts and fence settings landing late
        faults.before = self._before
        self.quarantined: list[tuple[str, dict[str, str], tuple[str, bytes] | None]] = []
        """Quarantine entries written: (stream, fields, the input entry named with it)."""
        self.dead_letters: list[tuple[str, dict[str, str]]] = []  # (dead-letter stream, its fields) as written
        self.hashes: dict[str, dict[str, int | bytes]] = {}  # the readers' owed hashes of entries trimmed unread
        self.answered: dict[str, int] = {}  # their answered marks (``unread.answered_key``): set at (ms)
        self.answered_ms: dict[str, int] = {}  # a mark's life where a draw set it (``runs.DRAW``), else ANSWERED_MS
        self.owing: dict[str, set[str]] = {}  # the groups' sets of consumers owing (``unread.owing_key``), drawn names
        self.swept: list[tuple[str, int]] = []  # consumers the sweep removed (``inputsweep``), entries moved
        self.marks: dict[str, bytes] = {}  # the groups' made-again marks (``again.py``), by key
        self.tokens: dict[str, bytes] = {}  # each consumer's token beside each stream (``bounds.bound_key``), by key
        self.fences: dict[str, bytes] = {}  # each consumer's fence of its dead-letter writes (``fence.py``), by key
        self.runs: dict[str, int] = {}  # the consumers' runs (``quarantine.run_key``), by key
        self.runs_swept: dict[str, int] = {}  # the highest run swept with its consumer (``quarantine.swept_runs_key``)
        self.drawn: dict[str, dict[str, int]] = {}  # each consumer's draws: token -> run (``quarantine.drawn_key``)
        self.refusals_elsewhere = 0  # refusals (E7) the dead letters' script found pending elsewhere: not written
        self.refused_swept = 0  # quarantine writes of a run swept with its consumer, refused (``quarantine._ONCE``)
        self.fenced: dict[tuple[str, bytes, str], int] = {}
        """Per input entry and consumer, the consumer's quarantine writes of it refused for their run (swept, or a run
        before): none of that run lands, whenever it does (E8)."""
        self.redrawn = 0  # runs drawn again by a reader whose run a sweep took while it ran (``keep_run``)
        self.passes_cut = 0  # passes over a reader's pending entries cut short at their deadline, world's time
        self.forgotten: dict[str, int] = {}  # per stream, entries trimmed unread the readers told (``unread._ACK``)
        self.owed_added: dict[str, int] = {}  # per stream, entries trimmed unread the reads counted owed
        self.told_unowed: dict[str, int] = {}  # per stream, counts told that the owed hash no longer held
        self.delivered: set[tuple[str, bytes]] = set()  # entries any consumer was given (since the group was made)
        self.read_after: dict[tuple[str, bytes, str], int] = {}
        """Per entry and consumer, the groups deleted (``groups_lost``) before that consumer was first given it."""
        self.given: dict[tuple[str, bytes], set[str]] = {}
        """Per entry, the consumers ever given it: what their processes may hold in memory, no part of what Redis
        holds (kept when Redis comes back from older data, ``inputtail``)."""
        self.unclaimed: set[tuple[str, bytes]] = set()  # trimmed entries ``XAUTOCLAIM`` took out of a pending list
        self.elsewhere: set[tuple[str, bytes]] = set()
        """Entries a group made again delivered again to a reader that did not make it: the other consumer's (it saw
        no NOGROUP), or one started since (the maker's memory gone with its process or its reader)."""
        self.groups_lost: list[tuple[str, dict[bytes, str], tuple[str, int] | None]] = []
        """Per ``XGROUP DESTROY``: the stream, its pending entries then (id -> consumer), the consumer whose reader
        made the group again (None: not yet)."""
        self.acked: dict[tuple[str, bytes], int] = {}  # input entry -> acknowledgements that took it
        self.acked_unheld: set[tuple[str, bytes]] = set()  # entries an XACK named while pending nowhere
        self.taken: dict[tuple[str, bytes], int] = {}  # per entry, the claims that took it from another consumer
        self.on_failed_write: Callable[[list[str], list[Any]], None] = lambda keys, args: None
        """Told each quarantine script call refused or its answer lost (``inputowed.OwedWatch``)."""

    # -- the producer's side ----------------------------------------------------------------------
    def xadd(self, stream: str, entry_id: bytes, flat: list[bytes], maxlen: int | None = None) -> None:
        """``XADD stream [MAXLEN n] id ...``: the oldest entries trimmed past ``maxlen``, pending or not."""
        held = self.streams.setdefault(stream, Stream())
        assert id_key(entry_id) > id_key(held.last_id)
        held.entries[entry_id], held.last_id = flat, entry_id
        while maxlen is not None and len(held.entries) > maxlen:
            gone = next(iter(held.entries))
            del held.entries[gone]
            held.trimmed.append(gone)

    def _before(self) -> None:
        """A call reaches Redis: the tags and the late calls due land first."""
        self.tags.calls(self)
        self.letters.calls(self.faults.events)

    # -- what the service calls ---------------------------------------------------------------------
    def set_response_callback(self, *_: Any) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def time(self) -> tuple[int, int]:
        return 0, 0

    def register_script(self, source: str) -> Callable[..., Any]:
        if source == bounds._TAG:  # a fault point of its own (``inputtags``)
            return self.tags.call(self)
        run = {unread._READ: self._read_new, unread._ACK: self._forget_owed,
               unread._MAKE: self.tags.made(lambda keys, args: inputgroups.make(self, keys, args)),
               claims._CLAIM: lambda keys, args: inputscripts.autoclaim(self, keys, args),
               dead_letters._WRITE: lambda keys, args: inputscripts.write_dead_letters(self, keys, args),
               departed._SWEEP: lambda keys, args: inputsweep.sweep(self, keys, args),
               runs.DRAW: lambda keys, args: inputsweep.draw_run(self, keys, args),
               again._PENDING: self._read_pending}[source]
        what = {unread._READ: "read", claims._CLAIM: "claim", dead_letters._WRITE: "dead letter",
                departed._SWEEP: "sweep", again._PENDING: "pending read"}.get(source, "script")

        async def call(keys: list[str], args: list[Any]) -> Any:
            await asyncio.sleep(0)
            if what == "dead letter" and self.letters.held(what, lambda: run(keys, args), self.faults.active,
                                                           inputscripts.letter_entries(keys, args)):
                raise _fail("lost")
            kind, ran = self.faults.draw(what, 1)
            out = run(keys, args) if ran else None
            if kind != "ok":
                raise _fail(kind)
            return out

        return call

    async def zrangebyscore(self, key: str, low: int, high: int | str) -> list[bytes]:
        """The tokens of a consumer's draws (``quarantine.drawn_key``) that drew a run from ``low`` to ``high``
        (``"+inf"``: no bound), read by ``runs.swept`` (``QuarantineStream.keep_run`` at each sweep)."""
        return [token.encode() for token, run in self.drawn.get(key, {}).items() if low <= run <= float(high)]

    async def zscore(self, key: str, member: str) -> float | None:
        """A consumer's run swept (``runs.SWEPT`` in its draws' record; ``--new-addresses``: the sweep's,
        ``inputsweep``), read by ``runs.swept`` (``keep_run``)."""
        held = self.drawn.get(key, {}).get(member)
        return None if held is None else float(held)

    async def set(self, key: str, value: bytes, px: int | None = None) -> bool:
        """A consumer's fence set anew (``fence.Fence.raised``): at its start, after a dead-letter write in doubt. A
        late dead letters' script due lands before it, as at any call (``LateLetters.calls``): its entries delivered
        again just before (a pass's read of them is one call), it is the one call between that read and the fence."""
        self.letters.calls(self.faults.events)
        if self.letters.held("fence", lambda: self.fences.__setitem__(key, value), self.faults.active):
            raise _fail("lost")  # landing late, over any token set since
        self.fences[key] = value
        return True

    async def get(self, key: str) -> bytes | None:
        """A consumer's run (``quarantine.run_key``), read by ``runs.swept`` (``keep_run``) and before each draw."""
        return None if key not in self.runs else str(self.runs[key]).encode()

    async def xinfo_stream(self, stream: str) -> dict[str, Any]:
        held = self.streams.get(stream)
        if held is None:
            raise ResponseError("no such key")
        return {"last-generated-id": held.last_id}

    async def xinfo_consumers(self, stream: str, group: str) -> list[dict[str, Any]]:
        await asyncio.sleep(0)
        kind, _ = self.faults.draw("consumers", 1)  # a read: lost after it ran, as refused
        if kind != "ok":
            raise _fail(kind)
        return inputsweep.consumers(self, stream, group)

    async def smembers(self, key: str) -> set[bytes]:
        await asyncio.sleep(0)
        kind, _ = self.faults.draw("owing", 1)  # a read: lost after it ran, as refused
        if kind != "ok":
            raise _fail(kind)
        return {name.encode() for name in self.owing.get(key, set())}

    def pipeline(self, transaction: bool = False) -> Pipeline:
        return Pipeline(self)

    async def run(self, calls: list[Call]) -> list[Any]:
        """``Nodes.run`` of the quarantine script's calls (``FactDesk``'s writes): a pipeline of them."""
        return await run_pipelined(self.pipeline(), calls)

    # -- Redis's side ---------------------------------------------------------------------------------
    def destroy(self, stream: str, group: str) -> None:
        """``XGROUP DESTROY`` (``inputgroups.destroy``)."""
        inputgroups.destroy(self, stream, group)

    def _group(self, stream: str, group: str) -> tuple[Stream, Group]:
        held = self.streams.get(stream)
        if held is None or group not in held.groups:
            raise ResponseError(f"NOGROUP No such key '{stream}' or consumer group '{group}'")
        return held, held.groups[group]

    def _read_new(self, keys: list[str], args: list[Any]) -> Any:
        # KEYS end with the owed hash, its answered mark (``inputsweep``: set where the hash is answered non-empty) and
        # the group's set of consumers owing (``unread.owing_key``: named where a read counts a gap)
        n, (group, consumer, count) = (len(keys) - 3) // 2, (_text(args[0]), _text(args[1]), int(args[2]))
        streams, mark_keys = keys[:n], keys[n:2 * n]
        reply, positions = [], []
        owed = self.hashes.setdefault(keys[-3], {})
        for stream in streams:
            self._group(stream, group)  # NOGROUP: the whole read refused, nothing delivered
        for stream in streams:
            held, mine = self._group(stream, group)
            rows = [[entry_id, list(flat)] for entry_id, flat in held.entries.items()
                    if id_key(entry_id) > id_key(mine.last)][:count]
            inputsweep.seen(self, stream, group, consumer, bool(rows))
            for entry_id, _ in rows:
                mine.pending[entry_id] = [consumer, 1, self.now_ms()]
                self.delivered.add((stream, entry_id))
                self.note_again(stream, held, entry_id, consumer)
            lost = sum(id_key(gone) > id_key(mine.last) for gone in held.trimmed)
            if rows and lost and mine.counted:  # crossed: owed until the reader says it told them
                owed[stream] = int(owed.get(stream, 0)) + lost
                self.owed_added[stream] = self.owed_added.get(stream, 0) + lost
                self.owing.setdefault(keys[-1], set()).add(consumer)
                owed.setdefault(stream + "\n", mine.last)
            if rows:
                mine.last, mine.counted = rows[-1][0], True  # XGROUP SETID ... ENTRIESREAD
                reply.append([stream.encode(), rows])
            positions.append(mine.last)
        flat = [part for name, value in owed.items() for part in (name.encode(), str(value).encode())]
        if flat:
            self.answered[keys[-2]] = self.now_ms()
            self.answered_ms.pop(keys[-2], None)  # PX ANSWERED_MS
        marks = [inputgroups.mark_kept(self, stream, group, key, position)
                 for stream, key, position in zip(streams, mark_keys, positions, strict=True)]
        return [reply or None, flat, positions, marks]

    def note_again(self, stream: str, held: Stream, entry_id: bytes, consumer: str) -> None:
        """``entry_id`` delivered to ``consumer`` (``read_after``, ``given``); by a group made again, at or before its
        newest entry then, to a reader other than the one that made it (``elsewhere``)."""
        self.read_after.setdefault((stream, entry_id, consumer), len(self.groups_lost))
        self.given.setdefault((stream, entry_id), set()).add(consumer)
        if held.remade is not None and held.remade[1] != MAKER.get() and id_key(entry_id) <= id_key(held.remade[0]):
            self.elsewhere.add((stream, entry_id))

    def _forget_owed(self, keys: list[str], args: list[Any]) -> None:
        """``unread._ACK``: what the reader told forgotten (more may be owed since); a stream no longer owed left
        alone, as its Lua does (``HEXISTS``: Redis, back from older data since the read, lost the count told)."""
        owed = self.hashes.setdefault(keys[0], {})
        for at in range(0, len(args), 2):
            stream, told = _text(args[at]), int(args[at + 1])
            if stream not in owed:
                self.told_unowed[stream] = self.told_unowed.get(stream, 0) + told
                continue
            self.forgotten[stream] = self.forgotten.get(stream, 0) + told
            owed[stream] = int(owed.get(stream, 0)) - told
            if int(owed[stream]) <= 0:
                owed.pop(stream, None)
                owed.pop(stream + "\n", None)

    def _read_pending(self, keys: list[str], args: list[Any]) -> Any:
        """``again._PENDING``: KEYS the streams, then their marks; ARGV group, consumer, count, an id per stream. The
        marks as Redis holds them, with the reply (one script: no restore, ``inputtail``, falls between them)."""
        group, consumer, count = _text(args[0]), _text(args[1]), int(args[2])
        streams, afters = keys[:len(keys) // 2], args[3:]
        marks = [self.marks.get(key) for key in keys[len(keys) // 2:]]
        reply = []
        for stream in streams:
            self._group(_text(stream), group)  # NOGROUP: the whole read refused
        for stream, after in zip(streams, afters, strict=True):
            held, mine = self._group(_text(stream), group)
            rows = []
            for entry_id in sorted(mine.pending, key=id_key):  # delivered in id order
                holder = mine.pending[entry_id]
                if holder[0] == consumer and id_key(entry_id) > id_key(_id(after)) and len(rows) < count:
                    flat = held.entries.get(entry_id)
                    if flat is not None:  # one trimmed away: [id, nil], its count and idle time left as they were
                        holder[1], holder[2] = holder[1] + 1, self.now_ms()
                        self.redelivered += 1
                        self.note_again(_text(stream), held, entry_id, consumer)
                        self.letters.read_again(_text(stream), entry_id)
                    rows.append([entry_id, None if flat is None else list(flat)])
            inputsweep.seen(self, _text(stream), group, consumer, any(row[1] is not None for row in rows))
            reply.append([_text(stream).encode(), rows])
        return [reply, marks]

    def xack(self, stream: str, group: str, *ids: bytes) -> int:
        """Whichever consumer holds each entry; 0 where the stream or the group is gone (no error: redis-server)."""
        held = self.streams.get(stream)
        mine = held.groups.get(group) if held is not None else None
        n = 0
        for entry_id in ids:
            self.on_ack(stream, _id(entry_id))  # checked as Redis takes it: the reader is done with it
            if mine is not None and mine.pending.pop(_id(entry_id), None) is not None:
                self.acked[(stream, _id(entry_id))] = self.acked.get((stream, _id(entry_id)), 0) + 1
                n += 1
            else:  # pending nowhere (its group gone, or made again past it), or another's XACK took it already
                self.acked_unheld.add((stream, _id(entry_id)))
        return n

    def xpending_one(self, stream: str, group: str, entry_id: bytes, consumer: str) -> list[dict[str, Any]]:
        _, mine = self._group(stream, group)
        holder = mine.pending.get(_id(entry_id))
        if holder is None or holder[0] != consumer:
            return []
        return [{"message_id": _id(entry_id), "consumer": consumer.encode(), "times_delivered": holder[1]}]

    def quarantine_script(self, keys: list[str], args: list[Any]) -> list[int]:
        return inputscripts.quarantine_once(self, keys, args)
