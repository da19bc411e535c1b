"""``--input-streams``: facts arrive through the real input-stream reader (``intake/ingest.py``), seeded, under faults.

Real: the readers (``StreamIngestor``: their reads of new entries, their passes over their own pending entries, their
owed quarantine writes first, their claims, their dead letters, their acknowledgements), the fact desk, the quarantine
stream's writes, the engine and its shards over ``SimLog``. Two consumers of the group, as under
``ATP_OWNERSHIP=leases``: the world's process (``atp-1``, owning every group) and another
(``inputreaders.OtherProcess``, ``atp-2``, owning none: every fact it reads sent to ``atp-1``, which applies it
without writing what it quarantines, and the sender writes that with its entry's XACK). Simulated: Redis
(``inputstreams.SimStreams``: the input streams, their consumer group, the scripts as their Lua does it), the other
process's sends and time. A producer (``inputfacts.Producer``) appends entries to two input streams — facts out of
event-time order, ties, exact duplicates (a new entry, one fact), conflicts (an identity with another payload),
entries that are no fact (dead-lettered), trimmed by the producer's ``MAXLEN`` in a third of the seeds (before a
consumer read them, or while pending), and positions past the shards' room (``max_positions_per_shard`` 2:
quarantined) until, once a seed, room is restored (the bound raised, the process restarted, as the runbook says).
Faults: the log's appends lost, in doubt or late and write pauses (``faults.StepRunner``), Redis's reads, claims,
pipelines, dead-letter and quarantine scripts refused or their answers lost (``inputstreams.RedisFaults``), the reader
stopped and started again (its pending entries delivered again), the process killed or stopped gracefully and
restarted (its owed quarantine writes forgotten); the other process's sends refused or their answers lost (or cut by
the owner's crash), that process restarted, or stopped (SIGSTOP) past ``claim_idle_ms`` — its pending entries claimed
by ``atp-1`` meanwhile, then going on where it was; the consumer group deleted on one stream or both (``XGROUP
DESTROY``) at a turn among the readers' calls, and made again by the reader that finds it gone (``NOGROUP``) or by a
start.

Invariants: every acknowledgement finds its entry's fact durable — applied in the log (landed) or its quarantine
entry written — or its dead letter written (``_acked``); no fact identity applied twice, on_hand the E1 fold of the
log (``checks.facts_fold_as_the_reference``) and, for positions nothing was quarantined or trimmed at, the E1 fold of
every fact produced there whatever the arrival order (E3); memory equals a replay (E10); owed writes at most the
entries read; an entry whose quarantine write failed (refused, or its answer lost: owed) never decided again while the
process that wrote it lives — neither applied nor quarantined again in its shard log (``inputowed``: the other process
lives on through the owner's restart that restores room) —, and at the end its fact in the quarantine stream, the entry
acknowledged; at the end, Redis answering, what ``inputchecks`` says of every entry (E6, E8) — an entry a group made
again delivers again to any reader, its fact quarantined before, not decided again — and no made-again mark kept.

With ``--fact-times`` some facts are stamped about E7's allowed skew ahead (``inputfacts``): judged by the clock of
the reader that reads them, or of the owner a second consumer sends them to, each refused is dead-lettered, never
applied (``inputchecks``).

Not modelled: batches in flight at once but those of the driver's calls (at most two, ``inputreaders.Loop``), facts
stamped late, SHIPMENTs naming reservations, entries deleted (``XDEL``), the side streams' ``MAXLEN``,
a stream deleted (``DEL``), a group made again by an operator, the owner's own reads stopped (SIGSTOP: only the other
process is), the owner's answers ``Moved`` or ``GroupRefused`` (a group handed over), several groups' owners (those
three: ``--processes 2|3``, ``inputcluster.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable

from atp_service.intake.ingest import StreamIngestor
from atp_service.intake.quarantine import QuarantineStream
from reservation import decode_entry
from reservation._events import FactApplied, FactQuarantined
from tests.sim.checks import Violation, facts_fold_as_the_reference
from tests.sim.driver import DEFAULT_STEPS
from tests.sim.faults import Call, StepRunner, collect, draw_plan
from tests.sim.inputchecks import decided_once, fold_of_produced, letters, marks_forgotten, named, named_fields
from tests.sim.inputclocks import clocks_counted, draw_clocks, end_clocks
from tests.sim.inputfacts import STREAMS, Producer, ahead_draws
from tests.sim.inputgroups import MAKER
from tests.sim.inputowed import OwedWatch
from tests.sim.inputreaders import CLAIM_IDLE_MS, OTHER, OWNER, OtherProcess, loop_of, started, turn, world_ticks
from tests.sim.inputstreams import RedisFaults, SimStreams
from tests.sim.inputtail import InputsTail
from tests.sim.invariants import ServiceErrors
from tests.sim.jumps import ClockJumps
from tests.sim.replay import replay_equals_live
from tests.sim.tally import Tally
from tests.sim.world import World

GROUP = "atp"
ROOM, ROOMY = 2, 1000
"""``max_positions_per_shard`` before room is restored, and after."""
CRASH_P, STOP_P, READER_RESTART_P = 0.06, 0.04, 0.1
OTHER_STOP_P, OTHER_RESTART_P, CLAIM_P = 0.06, 0.04, 0.25
"""The other process stopped (SIGSTOP, 1-4 steps, the clock moving past ``claim_idle_ms``) or restarted, per
step; a reader's turn a claim (``XAUTOCLAIM``; the real loop claims every ``claim_idle_ms`` / 2)."""
DESTROY_P = 0.03
"""A step in which an operator deletes the consumer group on one input stream or both (``XGROUP DESTROY``), at a turn
drawn among the readers' calls."""
DRAIN_TURNS = 300


class InputsDriver:
    def __init__(self, seed: int, tally: Tally | None = None, lose_tail: bool = False, clock_jumps: bool = False,
                 tag_faults: bool = False, fact_times: bool = False) -> None:
        """``lose_tail``: Redis back from older data (``inputtail``). ``clock_jumps``: the hosts' clocks jumping by
        hours (``jumps.py``, ``inputclocks``): the instance's and the other process's. ``tag_faults``: the readers'
        tags failing, landing late, their tokens lost (``inputtags``). ``fact_times``: some facts stamped about the
        allowed skew ahead (E7, ``inputfacts.Producer._ahead``)."""
        self.seed, self.rng = seed, random.Random(f"inputs {seed}")
        self.tally = tally or Tally()
        self.world = World(tally=self.tally, channels=False, cluster=seed % 2 == 1)
        if clock_jumps:
            self.world.jumps = ClockJumps(seed, self.tally, self.world.clock)
        self._room(ROOM)
        self.faults = RedisFaults(random.Random(f"redis {seed}"), random.Random(f"tags {seed}") if tag_faults else None)
        self.redis = SimStreams(self.faults, self._acked, self.world.clock.now_ms)
        self.owed = OwedWatch(self)
        self.redis.on_failed_write = lambda keys, args: self.owed.failed(self.redis, keys, args)
        self.world.log.client = self.redis  # the desk's quarantine writes and the reader's reads: one Redis
        self.world.log.faults = self.rng
        self.producer = Producer(self.rng, self.world, self.redis, ahead_draws(seed, fact_times))
        self.restore_at = self.rng.randint(10, 40)
        self.reader: StreamIngestor | None = None
        self.other = OtherProcess(self.world, self.redis, self.faults, self._settings())
        if self.world.jumps is not None:  # the other process's host: its own wall clock
            jumps = self.world.jumps
            self.other.clock_for = lambda: jumps.clock_for(OTHER)
        self.trace: list[str] = []
        self.violations: list[str] = []
        self._seen: dict[int, int] = {}  # per shard, the history entries indexed
        self._applied: set[tuple[str, str, str, str, int]] = set()
        self._quarantined: set[tuple[str, str, str, str, int]] = set()
        self.tail = InputsTail(self, seed) if lose_tail else None  # ``--lose-tail`` (``inputtail.py``)
        self.acked_lost: set[tuple[str, bytes]] = set()
        """Entries acknowledged while the instance served from memory Redis lost, their facts applied and answered
        in the tail Redis lost, held nowhere now (``inputtail``): lost with the tail, as the contract says."""
        self.lost_positions: set[tuple[str, str]] = set()  # of entries Redis lost: read before, applied or not
        self.applied_lost: set[tuple[str, str, str, str, int]] = set()  # facts applied in a tail Redis lost
        self.quarantined_lost: set[tuple[str, str, str, str, int]] = set()  # ... quarantined there (its stream kept)

    def _room(self, positions: int) -> None:
        world = self.world
        limits = dataclasses.replace(world.config.limits, max_positions_per_shard=positions)
        world.config = dataclasses.replace(world.config, limits=limits)
        world.durable = world._tracker()

    async def run(self, steps: int) -> None:
        step = -1
        try:
            allowed = _trimmed_unread if self.tail is None else \
                (lambda record, loss=self.tail.loss: _trimmed_unread(record) or loss.allows(record))
            with ServiceErrors(allowed) as errors:
                await self.world.boot()
                self.other.install()
                await self._new_reader()
                await started(await self.other.new_reader())
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
                            f"{' --lose-tail' if self.tail else ''}{' --clock-jumps' if self.world.jumps else ''}"
                            f"{' --tag-faults' if self.faults.tags else ''}"
                            f"{' --late-letters' if self.redis.letters.rng else ''}"
                            f"{' --fact-times' if self.producer.ahead else ''}"
                            f"{f' --steps {steps}' if steps != DEFAULT_STEPS else ''} --trace") from exc

    async def _new_reader(self) -> None:
        if self.reader is not None:
            await self.reader.stop()
        self.reader = self._make_reader()
        loop_of(self.reader)
        await started(self.reader)

    def _settings(self) -> object:
        return dataclasses.replace(self.world.config.ingest_settings, input_streams=STREAMS, consumer_group=GROUP,
                                   consumer_name=OWNER, ingest_count=3, claim_idle_ms=CLAIM_IDLE_MS)

    def _make_reader(self) -> StreamIngestor:
        return StreamIngestor(self.redis, self.world.fact_desk, self._settings(), self.world.service_clock,
                              ticks=world_ticks(self.world))

    # -- a step ------------------------------------------------------------------------------------------
    async def step(self, step: int) -> None:
        world, rng = self.world, self.rng
        if rng.random() < 0.14:
            world.clock.advance(rng.randint(0, 20_000))
        self._draws(step)
        self.producer.produce(step, self.trace)
        if step == self.restore_at:
            self._room(ROOMY)
            await self.restart(step, f"room restored (max_positions_per_shard {ROOMY})")  # as the runbook says
        elif rng.random() < READER_RESTART_P:
            await self._new_reader()
            self.tally.input_reader_restarts += 1
            self.trace.append(f"{step}: the reader stopped and started again")
        await self.other_step(step)
        reader = self.reader
        calls = [Call(f"reader x{turns}", lambda n=turns: self.turns(reader, n, lambda: self.reader), lambda _: None,
                      at=rng.randint(0, 30)) for turns in [rng.randint(1, 4) for _ in range(rng.randint(1, 2))]]
        if rng.random() < DESTROY_P:
            streams = rng.choice([[stream] for stream in STREAMS] + [list(STREAMS)])
            calls.append(Call(f"XGROUP DESTROY {' '.join(streams)}", lambda s=streams: self._destroy(s),
                              lambda _: None, at=rng.randint(0, 30)))
        plan = draw_plan(rng, CRASH_P, STOP_P)
        self.trace.append(f"{step}: {plan.describe()}; calls: {', '.join(c.label for c in calls)}")
        runner = StepRunner(world, rng)
        self.faults.active, self.faults.events = True, []
        try:
            ended = await runner.run(calls, plan)
        finally:
            self.faults.active = False
            end_clocks(world)
            events = runner.events + self.faults.events
            if events:
                self.trace.append(f"{step}: faults: " + ", ".join(events))
        clocks_counted(world, self.tally)
        if self.tail is not None and self.tail.due_at_end():
            self.trace.append(f"{step}: Redis restarted from the saved state after the calls")
        if ended != "crash":
            collect(calls)
        if ended is not None:
            self.other.owner_down = True
            await world.crash_and_recover(rng)
            self.other.owner_down = False
            self.reader = None  # the process's: gone with it
            self.owed.forget(OWNER)
            await self._new_reader()
            self.trace.append(f"{step}: {ended}, recovered")
        await world.quiesce()
        if self.tail is not None:
            await self.tail.after(step)

    def _draws(self, step: int) -> None:
        """At a step's start, the faults drawn from streams of their own: Redis's state saved or its restore's tick
        (``--lose-tail``), a host's clock jumping (``--clock-jumps``)."""
        if self.tail is not None and (drawn := self.tail.draw()):
            self.trace.append(f"{step}: {drawn}")
        draw_clocks(self.world, step, self.trace, self.tally)

    async def restart(self, step: int, why: str) -> None:
        """``atp-service serve`` stopped gracefully (Redis answering) and started again: what it owed forgotten."""
        self.owed.forget(OWNER)
        self.other.owner_down = True
        await self.world.restart_after_failure(self.rng)
        self.other.owner_down = False
        await self._new_reader()
        self.trace.append(f"{step}: {why}, restarted")

    async def _destroy(self, streams: list[str]) -> None:
        for stream in streams:
            self.redis.destroy(stream, GROUP)
        self.tally.input_groups_deleted += 1

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
            self.owed.forget(OTHER)
            await started(await other.new_reader())
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
            await turn(reader, self.rng.random() < CLAIM_P)

    # -- invariants --------------------------------------------------------------------------------------
    def _index(self) -> None:
        """The log's history (landed entries, never trimmed) read on from where it was read."""
        for shard, entries in self.world.log.history.items():
            for _, data in entries[self._seen.get(shard, 0):]:
                for e in decode_entry(data).events:
                    if isinstance(e, FactApplied):
                        self._applied.add(named(e.fact))
                    elif isinstance(e, FactQuarantined):
                        self._quarantined.add(named(e.fact))
            self._seen[shard] = len(entries)

    def _acked(self, stream: str, entry_id: bytes) -> None:
        """Redis takes an XACK of an entry: its fact is durable by now — applied in its shard log (its identity
        with this payload: a duplicate's too), or its quarantine entry written (its digest in the written set) — or
        its dead letter is written (an entry that is no fact, or one trimmed while pending)."""
        if (stream, entry_id) in letters(self):
            return
        if (stream, entry_id) in self.producer.malformed:
            self.violations.append(f"entry {stream} {entry_id.decode()} (no fact) acknowledged with no dead letter")
            return
        if (fact := self.producer.facts.get((stream, entry_id))) is None and self.tail is not None:
            return  # an entry Redis lost (``inputtail``): read before, acknowledged since, it holds nothing of it
        assert fact is not None, (stream, entry_id)
        self._index()
        digest = QuarantineStream.digest(fact)
        if named(fact) not in self._applied and not any(digest in s for s in self.redis.written.values()):
            if self.tail is not None and self.world.tail is not None and self.world.tail.stale and \
                    named(fact) in self.applied_lost | self.quarantined_lost and \
                    not self.tail.read_since(stream, entry_id, self._acker()):
                # applied and answered, or quarantined and written (read so before the loss), then lost with the tail,
                # its entry acknowledged since (``inputtail``)
                self.acked_lost.add((stream, entry_id))
                return
            self.violations.append(f"entry {entry_id.decode()} ({fact.source}/{fact.event_id}) acknowledged with its "
                                   "fact neither applied in the log nor written to the quarantine stream")

    def _acker(self) -> str | None:
        """The consumer whose acknowledgement Redis takes now: the one whose reader's turn runs the calling task
        (``MAKER``, set by ``loop_of`` and inherited by the tasks the turn starts — its settles, its desk's quarantine
        writes); None where no turn is (any of the two). The other process's XACK of an entry it sent before a loss,
        its owner's answer taken then, lands after it while the owner's reader is given the entry again meanwhile: that
        delivery decides nothing of the acknowledgement, which was decided from what was given before."""
        consumer = MAKER.get()[0]
        return None if consumer == "?" else consumer

    def check(self) -> None:
        world = self.world
        self._check_decided_and_owed(len(world.fact_desk.quarantine.owed))
        self.owed.applied(self)  # an entry owed: never read again before its write (E8)
        if world.tail is not None and world.tail.stale:
            return  # memory may hold what Redis lost until the instance restarts (``inputtail``)
        ledgers = [actor.ledger for actor in world.eng.actors]
        facts_fold_as_the_reference(world, ledgers)  # E1-E3 by the log, no identity applied twice (E8)
        replay_equals_live(world, world.replayed(range(world.config.shards)))

    def _check_decided_and_owed(self, owed: int) -> None:
        """No violation noted; every quarantine entry follows its decision in a shard log (E6); ``owed`` (quarantine
        writes the readers owe) tallied, never past the entries read."""
        if self.violations:
            raise Violation(f"E6/E8: {self.violations[0]}")
        for _, fields, _ in self.redis.quarantined:
            self._index()
            if named_fields(fields) not in self._quarantined | self.quarantined_lost:
                raise Violation(f"E6: {fields['source']}/{fields['event_id']} written to the quarantine stream, "
                                "its shard log holding no quarantine of it")
        self.tally.input_owed += owed > 0
        read = len(self.producer.facts) + (self.tail.entries_lost if self.tail is not None else 0)  # lost: read too
        if owed > read:
            raise Violation(f"owed quarantine writes ({owed}) past the entries read ({read})")

    def _done(self) -> bool:
        other = self.other.reader
        assert self.reader is not None and other is not None
        groups = [(held, held.groups.get(GROUP)) for held in self.redis.streams.values()]
        return all(mine is not None and not mine.pending and mine.last == held.last_id for held, mine in groups) \
            and not any(self.redis.hashes.values()) and not self.world.fact_desk.quarantine.owed \
            and not self.other.desk.quarantine.owed \
            and not (self.reader._retry_own_pending or other._retry_own_pending) \
            and not self.redis.letters.late  # a late script or setting still in flight lands before the end checks

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
                await self._settled(asyncio.ensure_future(turn(reader, self.rng.random() < CLAIM_P)))
            await self.world.quiesce()
        else:
            pending = sum(len(mine.pending) for held in self.redis.streams.values() for mine in held.groups.values())
            raise Violation(f"liveness: entries still pending after {DRAIN_TURNS} reader turns with Redis answering "
                            f"({pending} pending, {len(self.world.fact_desk.quarantine.owed)} owed)")
        self.check()
        decided_once(self)
        self.owed.written(self)
        self.tally.input_owed_watched += self.owed.seen
        assert self.reader is not None and not await self.reader._read(None, block=None)  # nothing new: marks go
        marks_forgotten(self)
        self.tally.input_claimed += self.redis.claimed
        self.tally.input_sent += self.other.sends
        self.tally.input_faults += sum(self.faults.counts.values())
        self.redis.tags.tallied(self.tally)
        self.redis.letters.tallied(self.tally)
        self.tally.input_redelivered += self.redis.redelivered
        self.tally.input_passes_cut += self.redis.passes_cut
        self.tally.input_refusals_elsewhere += self.redis.refusals_elsewhere
        fold_of_produced(self, [actor.ledger for actor in self.world.eng.actors])

    async def _settled(self, task: asyncio.Future[None] | None) -> None:
        """``task`` run to its end, Redis answering every append."""
        while task is not None and not task.done():
            await asyncio.sleep(0)
            self.world.log.pump("ok")
        if task is not None:
            task.result()


def _trimmed_unread(record: logging.LogRecord) -> bool:
    """The ERROR the reader logs by design where the producer's ``MAXLEN`` trimmed entries before they were read."""
    return getattr(record, "event", None) == "ingest_trimmed_unread"
