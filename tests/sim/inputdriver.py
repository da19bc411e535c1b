"""``--input-streams``: facts arrive through the real input-stream reader (``intake/ingest.py``), seeded, under faults.

Real: the readers (``StreamIngestor``: their reads of new entries, their passes over their own pending entries, their
owed quarantine writes first, their claims, their acknowledgements), the fact desk, the quarantine stream's writes, the
engine and its shards over ``SimLog``. Two consumers of the group, as under ``ATP_OWNERSHIP=leases``: the world's
process (``atp-1``, owning every group) and another (``inputreaders.OtherProcess``, ``atp-2``, owning none: every fact
it reads sent to ``atp-1``, which applies it without writing what it quarantines, and the sender writes that with its
entry's XACK). Simulated: Redis (``inputstreams.SimStreams``: the input stream, its consumer group, the scripts as their
Lua does it), the other process's sends and time. A producer appends facts to one input stream — out of event-time
order, ties, exact duplicates (a new entry, one fact), conflicts (an identity with another payload), positions past the
shards' room (``max_positions_per_shard`` 2: quarantined) until, once a seed, room is restored (the bound raised, the
process restarted, as the runbook says). Faults: the log's appends lost, in doubt or late and write pauses
(``faults.StepRunner``), Redis's reads, pipelines and quarantine scripts refused or their answers lost
(``inputstreams.RedisFaults``), the reader stopped and started again (its pending entries delivered again), the process
killed or stopped gracefully and restarted (its owed quarantine writes forgotten); the other process's sends refused or
their answers lost (or cut by the owner's crash), that process restarted, or stopped (SIGSTOP) past ``claim_idle_ms`` —
its pending entries claimed by ``atp-1`` meanwhile, then going on where it was.

Invariants: every acknowledgement finds its entry's fact durable — applied in the log (landed) or its quarantine
entry written (``_acked``); no fact identity applied twice, on_hand the E1 fold of the log
(``checks.facts_fold_as_the_reference``) and, for positions nothing was quarantined at, the E1 fold of every fact
produced there whatever the arrival order (E3); memory equals a replay (E10); owed writes at most the entries
read; at the end, Redis answering, every entry acknowledged and no write owed, and an entry whose fact has no
other entry applied or quarantined, exactly one of them, each once (E6, E8).

Not modelled: batches in flight at once (the real reader runs up to ``ingest_inflight``; here each batch is
awaited), trimming and dead letters, facts stamped in the future or late, SHIPMENTs naming reservations, a consumer
group deleted, the owner's own reads stopped (SIGSTOP: only the other process is), the owner's answers ``Moved``
or ``GroupRefused`` (a group handed over), several groups' owners.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable

from atp_service.intake.ingest import StreamIngestor
from atp_service.intake.quarantine import QuarantineStream
from reservation import Fact, FactKind, decode_entry
from reservation._events import FactApplied, FactQuarantined
from reservation._keys import fact_payload
from tests.sim.checks import Violation, facts_fold_as_the_reference
from tests.sim.driver import DEFAULT_STEPS
from tests.sim.faults import Call, StepRunner, collect, draw_plan
from tests.sim.inputreaders import CLAIM_IDLE_MS, OWNER, OtherProcess, sim_time, turn
from tests.sim.inputstreams import RedisFaults, SimStreams
from tests.sim.invariants import ServiceErrors
from tests.sim.replay import replay_equals_live
from tests.sim.tally import Tally
from tests.sim.world import World

STREAM, GROUP = "sim:in:pos", "atp"
SKUS, LOCATIONS, SOURCES = ("A", "B", "J", "C"), ("L1", "L2", "L3"), ("pos", "wms")
KINDS = (FactKind.SALE, FactKind.RETURN, FactKind.RECEIPT, FactKind.ADJUST, FactKind.COUNT)
ROOM, ROOMY = 2, 1000
"""``max_positions_per_shard`` before room is restored, and after."""
CRASH_P, STOP_P, READER_RESTART_P = 0.06, 0.04, 0.1
OTHER_STOP_P, OTHER_RESTART_P, CLAIM_P = 0.06, 0.04, 0.25
"""The other process stopped (SIGSTOP, 1-4 steps, the clock moving past ``claim_idle_ms``) or restarted, per
step; a reader's turn a claim (``XAUTOCLAIM``; the real loop claims every ``claim_idle_ms`` / 2)."""
DRAIN_TURNS = 300


class InputsDriver:
    def __init__(self, seed: int, tally: Tally | None = None) -> None:
        self.seed, self.rng = seed, random.Random(f"inputs {seed}")
        self.tally = tally or Tally()
        self.world = World(tally=self.tally, channels=False, cluster=seed % 2 == 1)
        self._room(ROOM)
        self.faults = RedisFaults(random.Random(f"redis {seed}"))
        self.redis = SimStreams(self.faults, self._acked, self.world.clock.now_ms)
        self.world.log.client = self.redis  # the desk's quarantine writes and the reader's reads: one Redis
        self.world.log.faults = self.rng
        self.facts: dict[tuple[str, bytes], Fact] = {}  # input entry (stream, id) -> its fact
        self.produced: list[Fact] = []
        self.restore_at = self.rng.randint(10, 40)
        self.reader: StreamIngestor | None = None
        self.other = OtherProcess(self.world, self.redis, self.faults, self._settings())
        self._gone: dict[int, bool] = {}  # per reader, its consumer group found gone (``inputreaders.turn``)
        self.last_ms, self.last_seq = 0, 0
        self.trace: list[str] = []
        self.violations: list[str] = []
        self._seen: dict[int, int] = {}  # per shard, the history entries indexed
        self._applied: set[tuple[str, str, str, str, int]] = set()
        self._quarantined: set[tuple[str, str, str, str, int]] = set()

    def _room(self, positions: int) -> None:
        world = self.world
        limits = dataclasses.replace(world.config.limits, max_positions_per_shard=positions)
        world.config = dataclasses.replace(world.config, limits=limits)
        world.durable = world._tracker()

    async def run(self, steps: int) -> None:
        step = -1
        try:
            with sim_time(self.world), ServiceErrors() as errors:
                await self.world.boot()
                self.other.install()
                await self._new_reader()
                await (await self.other.new_reader())._create_groups()
                for step in range(steps):
                    await self.step(step)
                    errors.check()
                    self.check()
                await self.drain()
                await self.other.cancel()
                await self.world.stop()
                errors.check()
        except Exception as exc:
            tail = "\n  ".join(self.trace[-24:])
            raise Violation(f"seed {self.seed} --input-streams, after step {step}: {exc}\n  last steps:\n  {tail}\n"
                            f"replay: .venv/bin/python -m tests.sim --input-streams --seed {self.seed}"
                            f"{f' --steps {steps}' if steps != DEFAULT_STEPS else ''} --trace") from exc

    async def _new_reader(self) -> None:
        if self.reader is not None:
            await self.reader.stop()
        self.reader = self._make_reader()
        await self.reader._create_groups()

    def _settings(self) -> object:
        return dataclasses.replace(self.world.config.ingest_settings, input_streams=(STREAM,), consumer_group=GROUP,
                                   consumer_name=OWNER, ingest_count=3, claim_idle_ms=CLAIM_IDLE_MS)

    def _make_reader(self) -> StreamIngestor:
        return StreamIngestor(self.redis, self.world.fact_desk, self._settings(), self.world.clock)

    # -- a step ------------------------------------------------------------------------------------------
    async def step(self, step: int) -> None:
        world, rng = self.world, self.rng
        if rng.random() < 0.14:
            world.clock.advance(rng.randint(0, 20_000))
        self.produce(step)
        if step == self.restore_at:
            self._room(ROOMY)
            self.other.owner_down = True
            await world.restart_after_failure(rng)  # the bound raised, the service restarted
            self.other.owner_down = False
            await self._new_reader()
            self.trace.append(f"{step}: room restored (max_positions_per_shard {ROOMY}), restarted")
        elif rng.random() < READER_RESTART_P:
            await self._new_reader()
            self.tally.input_reader_restarts += 1
            self.trace.append(f"{step}: the reader stopped and started again")
        await self.other_step(step)
        reader = self.reader
        calls = [Call(f"reader x{turns}", lambda n=turns: self.turns(reader, n, lambda: self.reader), lambda _: None,
                      at=rng.randint(0, 30)) for turns in [rng.randint(1, 4) for _ in range(rng.randint(1, 2))]]
        plan = draw_plan(rng, CRASH_P, STOP_P)
        self.trace.append(f"{step}: {plan.describe()}; calls: {', '.join(c.label for c in calls)}")
        runner = StepRunner(world, rng)
        self.faults.active, self.faults.events = True, []
        try:
            ended = await runner.run(calls, plan)
        finally:
            self.faults.active = False
            events = runner.events + self.faults.events
            if events:
                self.trace.append(f"{step}: faults: " + ", ".join(events))
        if ended != "crash":
            collect(calls)
        if ended is not None:
            self.other.owner_down = True
            await world.crash_and_recover(rng)
            self.other.owner_down = False
            self.reader = None  # the process's: gone with it
            await self._new_reader()
            self.trace.append(f"{step}: {ended}, recovered")
        await world.quiesce()

    async def other_step(self, step: int) -> None:
        """The other process: continued when its stop ends, else stopped or restarted as drawn; its turns."""
        other, rng = self.other, self.rng
        if step == other.stopped_until:
            other.gate.running.set()
            self.trace.append(f"{step}: the other process continued")
        elif not other.gate.running.is_set():
            self.world.clock.advance(CLAIM_IDLE_MS // 2)  # stopped: its pending entries go idle
        elif rng.random() < OTHER_STOP_P:
            other.gate.running.clear()
            other.stopped_until = step + rng.randint(1, 4)
            self.tally.input_other_stops += 1
            self.trace.append(f"{step}: the other process stopped (SIGSTOP) until step {other.stopped_until}")
        elif rng.random() < OTHER_RESTART_P:
            await (await other.new_reader())._create_groups()
            self.trace.append(f"{step}: the other process restarted")
        reader, n = other.reader, rng.randint(1, 4)
        other.run(lambda: self.turns(reader, n, lambda: other.reader))

    async def turns(self, reader: StreamIngestor | None, n: int, current: Callable[[], StreamIngestor | None]
                    ) -> None:
        """``StreamIngestor.step`` ``n`` times, as its loop (``_run``) runs it, without its wall-clock waits
        (``inputreaders.turn``): a claim drawn now and then."""
        for _ in range(n):
            if reader is not current() or reader is None:
                return  # stopped: a new reader reads on
            await turn(reader, self.rng.random() < CLAIM_P, self._gone)

    def produce(self, step: int) -> None:
        for _ in range(self.rng.choice((0, 1, 1, 2, 3))):
            fact = self._fact()
            now = self.world.clock.now_ms()
            self.last_ms, self.last_seq = (now, 0) if now > self.last_ms else (self.last_ms, self.last_seq + 1)
            entry_id = b"%d-%d" % (self.last_ms, self.last_seq)
            self.facts[(STREAM, entry_id)] = fact
            self.redis.xadd(STREAM, entry_id, _flat(fact))
            self.trace.append(f"{step}: XADD {entry_id.decode()} {fact.source}/{fact.event_id} "
                              f"{FactKind(fact.kind).name} {fact.sku}@{fact.location} {fact.quantity} "
                              f"t{fact.event_time - now}")

    def _fact(self) -> Fact:
        rng, now = self.rng, self.world.clock.now_ms()
        roll = rng.random()
        if self.produced and roll < 0.12:
            return rng.choice(self.produced)  # an exact duplicate: a producer's resend (E8)
        if self.produced and roll < 0.16:
            old = rng.choice(self.produced)  # a conflict (E8): same identity, another quantity
            qty = old.quantity + 1 if old.quantity != -1 else -2
            return Fact(old.event_id, old.source, old.kind, old.sku, old.location, qty, old.event_time)
        kind = rng.choice(KINDS)
        qty = (rng.randint(-3, 3) or 1) if kind == FactKind.ADJUST else rng.randint(0 if kind == FactKind.COUNT
                                                                                      else 1, 12)
        at = now - rng.randint(0, 120_000)  # out of event-time order
        if self.produced and rng.random() < 0.2:
            at = rng.choice(self.produced).event_time  # an E1 tie
        fact = Fact(f"f{len(self.produced)}", rng.choice(SOURCES), kind, rng.choice(SKUS), rng.choice(LOCATIONS),
                    qty, at)
        self.produced.append(fact)
        return fact

    # -- invariants --------------------------------------------------------------------------------------
    def _index(self) -> None:
        """The log's history (landed entries, never trimmed) read on from where it was read."""
        for shard, entries in self.world.log.history.items():
            for _, data in entries[self._seen.get(shard, 0):]:
                for e in decode_entry(data).events:
                    if isinstance(e, FactApplied):
                        self._applied.add(_named(e.fact))
                    elif isinstance(e, FactQuarantined):
                        self._quarantined.add(_named(e.fact))
            self._seen[shard] = len(entries)

    def _acked(self, stream: str, entry_id: bytes) -> None:
        """Redis takes an XACK of an entry: its fact is durable by now — applied in its shard log (its identity
        with this payload: a duplicate's too), or its quarantine entry written (its digest in the written set)."""
        fact = self.facts[(stream, entry_id)]
        self._index()
        digest = QuarantineStream.digest(fact)
        if _named(fact) not in self._applied and not any(digest in s for s in self.redis.written.values()):
            self.violations.append(f"entry {entry_id.decode()} ({fact.source}/{fact.event_id}) acknowledged with its "
                                   "fact neither applied in the log nor written to the quarantine stream")

    def check(self) -> None:
        world = self.world
        if self.violations:
            raise Violation(f"E6/E8: {self.violations[0]}")
        for _, fields, _ in self.redis.quarantined:  # a quarantine entry follows its decision in the log (E6)
            named = _named_fields(fields)
            self._index()
            if named not in self._quarantined:
                raise Violation(f"E6: {fields['source']}/{fields['event_id']} written to the quarantine stream, "
                                "its shard log holding no quarantine of it")
        owed = len(world.fact_desk.quarantine.owed)
        self.tally.input_owed += owed > 0
        if owed > len(self.facts):
            raise Violation(f"owed quarantine writes ({owed}) past the entries read ({len(self.facts)})")
        ledgers = [actor.ledger for actor in world.eng.actors]
        facts_fold_as_the_reference(world, ledgers)  # E1-E3 by the log, no identity applied twice (E8)
        replay_equals_live(world, world.replayed(range(world.config.shards)))

    def fold_of_produced(self, ledgers: list) -> None:  # type: ignore[type-arg]
        """E3, every entry done: at a position nothing was quarantined at (no conflict, room), on_hand is the E1 fold
        of every fact produced there, whatever order they arrived in."""
        quarantined = {(f["sku"], f["location"]) for _, f, _ in self.redis.quarantined}
        quarantined |= {(sku, loc) for _, _, sku, loc, _ in self._quarantined}
        by_position: dict[tuple[str, str], dict[tuple[str, str], Fact]] = {}
        for fact in self.facts.values():
            by_position.setdefault((fact.sku, fact.location), {})[(fact.source, fact.event_id)] = fact
        actual = {(s, loc): q.on_hand for ledger in ledgers for s, loc, q in ledger.store.items()}
        for position, facts in by_position.items():
            if position in quarantined:
                continue
            on_hand = 0
            for fact in sorted(facts.values(), key=lambda f: (f.event_time, f.kind == FactKind.COUNT, f.source,
                                                               f.event_id)):
                on_hand = fact.quantity if fact.kind == FactKind.COUNT else on_hand + fact.delta
            if actual.get(position, 0) != on_hand:
                raise Violation(f"E1/E3: {position} on_hand {actual.get(position, 0)}, the E1 fold of the facts "
                                f"produced there gives {on_hand}")

    def _done(self) -> bool:
        mine = self.redis.streams[STREAM].groups[GROUP]
        other = self.other.reader
        assert self.reader is not None and other is not None
        return not mine.pending and mine.last == next(reversed(self.redis.streams[STREAM].entries), b"0-0") \
            and not self.world.fact_desk.quarantine.owed and not self.reader._retry_own_pending \
            and not self.other.desk.quarantine.owed and not other._retry_own_pending

    async def drain(self) -> None:
        """Redis answering, both processes running, the readers read until nothing is pending nor new (the clock
        moving on: an owner skipped after a failed send is tried again); then every entry is done once."""
        self.other.gate.running.set()
        await self._settled(self.other.task)
        for _ in range(DRAIN_TURNS):
            if self._done():
                break
            self.world.clock.advance(1000)
            for reader in (self.reader, self.other.reader):
                await self._settled(asyncio.ensure_future(turn(reader, self.rng.random() < CLAIM_P, self._gone)))
            await self.world.quiesce()
        else:
            raise Violation(f"liveness: entries still pending after {DRAIN_TURNS} reader turns with Redis answering "
                            f"({len(self.redis.streams[STREAM].groups[GROUP].pending)} pending, "
                            f"{len(self.world.fact_desk.quarantine.owed)} owed)")
        self.check()
        self.decided_once()
        self.tally.input_claimed += self.redis.claimed
        self.tally.input_sent += self.other.sends
        self.fold_of_produced([actor.ledger for actor in self.world.eng.actors])

    async def _settled(self, task: asyncio.Future[None] | None) -> None:
        """``task`` run to its end, Redis answering every append."""
        while task is not None and not task.done():
            await asyncio.sleep(0)
            self.world.log.pump("ok")
        if task is not None:
            task.result()

    def decided_once(self) -> None:
        """Every entry acknowledged; an entry whose fact identity has no other entry: applied or quarantined,
        exactly one (never both, never neither), each once."""
        if missing := [e for e in self.facts if e not in self.redis.acked]:
            raise Violation(f"entries never acknowledged: {[f'{s} {e.decode()}' for s, e in missing[:5]]}")
        entries_of: dict[tuple[str, str, str, str], int] = {}
        for fact in self.facts.values():
            entries_of[_named(fact)[:4]] = entries_of.get(_named(fact)[:4], 0) + 1
        written = [_named_fields(f) for _, f, _ in self.redis.quarantined]
        if len(written) != len(set(written)):
            raise Violation("E8: a fact written to the quarantine stream twice")
        self._index()
        for (stream, entry_id), fact in self.facts.items():
            if entries_of[_named(fact)[:4]] > 1:
                continue
            applied, held = _named(fact) in self._applied, _named(fact) in written
            if applied == held:
                raise Violation(f"E6/E8: entry {stream} {entry_id.decode()} ({fact.source}/{fact.event_id}) "
                                f"{'both applied and quarantined' if applied else 'neither applied nor quarantined'}")
            self.tally.input_quarantined += held
        self.tally.input_entries += len(self.facts)
        self.tally.input_faults += sum(self.faults.counts.values())
        self.tally.input_redelivered += self.redis.redelivered


def _named(fact: Fact) -> tuple[str, str, str, str, int]:
    return fact.source, fact.event_id, fact.sku, fact.location, fact_payload(fact)


def _named_fields(fields: dict[str, str]) -> tuple[str, str, str, str, int]:
    fact = Fact(fields["event_id"], fields["source"], FactKind[fields["kind"]], fields["sku"], fields["location"],
                int(fields["quantity"]), int(fields["event_time_ms"]), fields["reservation_id"])
    return _named(fact)


def _flat(fact: Fact) -> list[bytes]:
    """An input entry's fields, in the documented order (``entries.REQUIRED``)."""
    values = (fact.event_id, fact.source, FactKind(fact.kind).name, fact.sku, fact.location, fact.quantity,
              fact.event_time)
    names = ("event_id", "source", "kind", "sku", "location", "quantity", "event_time_ms")
    return [str(v).encode() for pair in zip(names, values, strict=True) for v in pair]
