"""``--input-streams --processes 2|3``: the input streams read by several service processes sharing a keyspace
(``ownership = leases``), each a consumer of the one group, under the multi-process world's faults.

Real, per process (``cluster.ClusterWorld``): its ``StreamIngestor`` (consumer ``atp@<address>``, the same after a
restart: it reads its own pending entries again first), its ``FactDesk`` applying the facts of the groups it owns, and
its sends (``OwnerSends``) of the others' facts to their owners — ``RecordEvents`` at the owner saying the sender writes
what it quarantines (E7 judged by the owner's clock, ``factjudge``), refused before it ran or its answer lost after,
waiting while the owner is paused and cut when it dies (``Process.call``). Simulated: Redis
(``inputstreams.SimStreams``), the other draws of ``inputdriver`` (the producer, Redis's faults, groups deleted), and
the membership faults of the multi-process driver (``disrupt.Disruptor``): a process killed (every task of its reader
ending wherever it is, its entries left pending to it until another claims them past ``claim_idle_ms``), paused
(SIGSTOP: its reader's calls, its sends and its quarantine writes waiting, its groups taken meanwhile), a group handed
over, a graceful stop; processes restarted. Room is restored by a rolling restart of every process with the bound
raised.

Invariants: those of ``inputdriver`` (every acknowledgement finds its fact durable, no identity applied twice, on_hand
the E1 fold of the log and of the facts produced, memory equals a replay, each entry decided once at the end), every
shard answering at each step's end, the entries a dead process held taken over and decided.

An entry whose quarantine write failed (owed) is watched while the process that wrote it lives (``inputowed``).

With ``--partition`` two processes (or one and both others) cut off from each other over gRPC, both reaching Redis
(``partition.py``): a send across the cut is never sent, or made at the owner with its answer lost.

With ``--suspends`` leases are counted on each host's lease clock with finite deadlines and some pauses are suspends
of a process's host (``suspends.py``): woken, its reader and desk go on with what they held, and it answers no read
of a group taken meanwhile (R7).

With ``--new-addresses`` a process started again comes back now and then at a new address (a pod rescheduled, a host
replaced), or at its first one again, and each reader sweeps the group after its claims (``intake/departed.py``, Redis's
side in ``inputsweep``): a consumer at an address no live process has, nothing pending, idle ``claim_idle_ms``, removed
and its owed counts of entries trimmed unread told by the sweeper — under every fault here (its answers lost, two
sweepers, the owner paused or coming back at its address meanwhile). The checks at the end hold it to E6: every entry
trimmed unread told exactly once (``inputchecks.decided_once``), no owed hash left, and every consumer left in the group
one of a live process (``swept``: bounded). Processes stopped past their sweep (``inputholds``), some holding a
quarantine write that lands once they run again: a write of a run swept lands nothing (E8).

With ``--lose-tail`` the one Redis behind the input streams and the logs comes back from older data at a tick, every
key at once, lease and owner keys too (``inputtail``, ``tailloss.py``): the processes' owner checks run at ticks drawn
there and at each step's end; a group found short is given up and taken again from what Redis holds — no process
restarts, its reader and its desk go on with what they hold — and by the step's end every group's owner holds exactly
what Redis holds. An acknowledgement landing after the loss whose fact was applied or quarantined in the tail Redis
lost is left out of the checks only where its consumer was given the entry before the loss (``_acker``): one given it
since decides from what its process knows since. With ``--clock-skew`` and ``--clock-jumps`` each process's clock is
its host's (``skew.py``, ``jumps.py``, ``inputclocks``).

Not modelled here: a restore of one Redis Cluster node (the input streams' keys and the logs come back together).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable
from typing import Any

from atp_service.app.service import AtpService
from atp_service.intake.departed import DepartedConsumers
from atp_service.intake.ingest import StreamIngestor
from reservation import DomainError, Fact
from tests.sim.checks import Violation, facts_fold_as_the_reference
from tests.sim.cluster import ClusterWorld
from tests.sim.disrupt import Disruptor
from tests.sim.driver import DEFAULT_STEPS
from tests.sim.factjudge import judged_sent
from tests.sim.faults import Call, StepRunner, collect, draw_plan
from tests.sim.ids import SimIdClaims
from tests.sim.inputchecks import decided_once, departed_left, fold_of_produced, marks_forgotten, swept
from tests.sim.inputclocks import clocks_counted, draw_clocks, end_clocks
from tests.sim.inputdriver import CLAIM_P, DESTROY_P, DRAIN_TURNS, GROUP, ROOM, ROOMY, InputsDriver, _trimmed_unread
from tests.sim.inputfacts import STREAMS, Producer, ahead_draws
from tests.sim.inputholds import StoppedHolding
from tests.sim.inputowed import OwedWatch
from tests.sim.inputpipeline import _fail
from tests.sim.inputprocs import Awake, Live, Moving, Writes
from tests.sim.inputreaders import CLAIM_IDLE_MS, GatedClient, loop_of, started, turn, world_ticks
from tests.sim.inputstreams import RedisFaults, SimStreams
from tests.sim.inputtail import InputsTail
from tests.sim.invariants import ServiceErrors, every_shard_answers
from tests.sim.partition import Partitions
from tests.sim.process import CURRENT, Process
from tests.sim.replay import replay_equals_live
from tests.sim.tally import Tally


class InputsClusterDriver(InputsDriver):
    def __init__(self, seed: int, processes: int, tally: Tally | None = None, partition: bool = False,
                 suspends: bool = False, new_addresses: bool = False, lose_tail: bool = False,
                 clock_skew: bool = False, clock_jumps: bool = False, tag_faults: bool = False,
                 fact_times: bool = False) -> None:
        """``partition``: processes cut off from each other over gRPC (``partition.py``): sends to owners fail.
        ``suspends``: leases counted on each host's lease clock, finite deadlines, some pauses a host's suspend
        (``suspends.py``): a woken process's reader and desk go on with what they held. ``new_addresses``: processes
        started again at new addresses, departed consumers swept (``inputsweep``). ``lose_tail``: Redis back from
        older data (``inputtail``). ``clock_skew``, ``clock_jumps``: each host's clock its own (``skew.py``), jumping
        by hours (``jumps.py``). ``tag_faults``: the readers' tags failing, landing late, their tokens lost
        (``inputtags``). ``fact_times``: some facts stamped about the allowed skew ahead (E7, ``inputfacts``)."""
        self.seed, self.processes = seed, processes
        self.rng = random.Random(f"inputs {seed} processes {processes}")
        self.tally = tally or Tally()
        world = self.world = Moving(processes, random.Random(f"cluster {seed}"), self.tally,
                                    checks=random.Random(f"owner check {seed}"), skew_seed=seed if clock_skew else None,
                                    jumps_seed=seed if clock_jumps else None)
        self.new_addresses = new_addresses
        self.stops = StoppedHolding(self, seed) if new_addresses else None  # processes stopped past their sweep
        if new_addresses:
            world.moves = random.Random(f"moves {seed}")
        self.faults = RedisFaults(random.Random(f"redis {seed}"), random.Random(f"tags {seed}") if tag_faults else None)
        self.redis = SimStreams(self.faults, self._acked, world.clock.now_ms)
        self.owed = OwedWatch(self)
        self.tail = InputsTail(self, seed) if lose_tail else None  # before the processes: their takings' marks
        self.redis.on_failed_write = lambda keys, args: self.owed.failed(self.redis, keys, args)
        world.log.client = Writes(self.redis)  # the desks' quarantine writes: one Redis
        if self.stops is not None:
            world.log.client.before = self.stops.holding
        world.log.faults = self.rng
        world.log.ids = SimIdClaims(seed, self.tally)
        self._room(ROOM)
        world.processes = [world._new(i) for i in range(processes)]  # made with the bound (and the client) above
        world.partitions = self.partitions = Partitions(seed, self.tally) if partition else None
        if suspends:
            world.sleeps.start(seed)
        self.producer = Producer(self.rng, world, self.redis, ahead_draws(seed, fact_times))
        self.restore_at = self.rng.randint(10, 40)
        self.readers: dict[str, tuple[Process, StreamIngestor]] = {}
        self.trace: list[str] = []
        self.violations: list[str] = []
        self._seen: dict[int, int] = {}
        self._applied: set[tuple[str, str, str, str, int]] = set()
        self._quarantined: set[tuple[str, str, str, str, int]] = set()
        self.acked_lost: set[tuple[str, bytes]] = set()
        self.lost_positions: set[tuple[str, str]] = set()
        self.applied_lost: set[tuple[str, str, str, str, int]] = set()
        self.quarantined_lost: set[tuple[str, str, str, str, int]] = set()
        self.sends = 0
        self.reader = None  # the single-process driver's (``InputsDriver._done``): none here

    @property
    def cluster(self) -> ClusterWorld:
        assert isinstance(self.world, ClusterWorld)
        return self.world

    async def run(self, steps: int) -> None:
        step = -1
        try:
            allowed = _trimmed_unread if self.tail is None else \
                (lambda record, loss=self.tail.loss: _trimmed_unread(record) or loss.allows(record))
            with ServiceErrors(allowed) as errors:
                await self.cluster.boot()
                await self._readers()
                for step in range(steps):
                    await self.step(step)
                    errors.check()
                    self.check()
                    await every_shard_answers(self.world)
                if self.partitions is not None:
                    self.partitions.heal()  # the run's end: the processes reach each other again
                await self.drain()
                await self.cluster.stop()
                errors.check()
        except Exception as exc:
            tail = "\n  ".join(self.trace[-24:])
            flags = (f"--input-streams --processes {self.processes}{' --partition' if self.partitions else ''}"
                     f"{' --suspends' if self.cluster.sleeps.finite else ''}"
                     f"{' --new-addresses' if self.new_addresses else ''}{' --lose-tail' if self.tail else ''}"
                     f"{' --clock-skew' if self.cluster.skew else ''}{' --clock-jumps' if self.cluster.jumps else ''}"
                     f"{' --tag-faults' if self.faults.tags else ''}{' --fact-times' if self.producer.ahead else ''}"
                     f"{' --late-letters' if self.redis.letters.rng else ''}")
            raise Violation(f"seed {self.seed} {flags}, after step {step}: {exc}\n  last steps:\n  {tail}\n"
                            f"replay: .venv/bin/python -m tests.sim {flags} --seed {self.seed}"
                            f"{f' --steps {steps}' if steps != DEFAULT_STEPS else ''} --trace") from exc

    # -- the processes' readers ----------------------------------------------------------------------
    def _settings(self, proc: Process) -> Any:
        return dataclasses.replace(super()._settings(), consumer_name=f"atp@{proc.address}")

    def current(self, proc: Process) -> StreamIngestor | None:
        """``proc``'s reader while it is the live process at its address (a restarted one has a new reader)."""
        held = self.readers.get(proc.address)
        return held[1] if held is not None and held[0] is proc and not proc.dead else None

    async def _readers(self) -> None:
        """Each live process without a reader (started, or started again) makes one: its consumer group made."""
        for proc in self.cluster.processes:
            if proc.dead or self.current(proc) is not None:
                continue
            self.owed.forget(f"atp@{proc.address}")  # the process started again forgot what it owed, by design
            client = GatedClient(self.redis, Awake(proc))  # type: ignore[arg-type]
            settings, departed = self._settings(proc), None
            if self.new_addresses:  # as ``AtpService._ingestor`` wires it
                live = Live(proc)
                departed = DepartedConsumers(client, list(settings.input_streams), settings.consumer_group,
                                             settings.consumer_name, lambda live=live: AtpService._live_addresses(
                                                 live),  # type: ignore[arg-type, misc]
                                             settings.claim_idle_ms, quarantine=proc.facts.quarantine.stream)
            reader = StreamIngestor(client, proc.facts, settings, proc.engine.clock,  # type: ignore[arg-type]
                                    send=self._sender(proc), departed=departed, ticks=world_ticks(self.world))
            self.readers[proc.address] = proc, reader

            async def start(reader: StreamIngestor = reader) -> None:
                loop_of(reader)
                await started(reader)

            await asyncio.wait({proc.spawn(start())})

    def _sender(self, proc: Process) -> Callable[[str, list[Fact]], Any]:
        async def send(owner: str, facts: list[Fact]) -> list[Any]:
            """``RecordEvents`` at ``owner`` (``edge.record.fact_sender``), the sender writing what it quarantines; E7
            judged by the owner's clock."""
            await proc.log.awake()
            kind, _ = self.faults.draw("send", 1)
            target = self.cluster.at(owner)
            cut = self.cluster.cut(proc.address, owner)  # ``--partition``: never sent, or made there, its answer lost
            if kind == "refused" or target is None or target.dead or cut == "unsent":
                raise _fail("refused")

            async def record() -> list[Any]:
                return await judged_sent(target.facts, target.engine.clock.now_ms(), target.engine.limits, list(facts))

            self.sends += 1
            answer: list[DomainError | Any] = await target.call(record)
            await proc.log.awake()
            if kind == "lost" or cut is not None:
                raise _fail("lost")
            return answer

        return send

    async def _turns_of(self, proc: Process, n: int) -> None:
        """``n`` turns of ``proc``'s reader, as a task of that process (its kill ends them wherever they are)."""
        reader = self.current(proc)
        if reader is None:
            return
        task = proc.spawn(self.turns(reader, n, lambda: self.current(proc)))
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None and not proc.dead:
            raise task.exception()  # type: ignore[misc]

    # -- a step --------------------------------------------------------------------------------------
    async def step(self, step: int) -> None:
        world, rng = self.cluster, self.rng
        draw_clocks(world, step, self.trace, self.tally)
        if rng.random() < 0.14:
            world.clock.advance(rng.randint(0, 20_000))
        if self.tail is not None and (drawn := self.tail.draw()):
            self.trace.append(f"{step}: {drawn}")
        if any(proc.dead for proc in world.processes):  # down a while: the entries pending to it go idle
            world.clock.advance(CLAIM_IDLE_MS // 2)
        self.producer.produce(step, self.trace)
        if step == self.restore_at:
            await self._restart_all()
            self.trace.append(f"{step}: room restored (max_positions_per_shard {ROOMY}), every process restarted")
        await self._readers()
        calls = [Call(f"{proc.address} reader x{n}", lambda p=proc, n=n: self._turns_of(p, n), lambda _: None,
                      at=rng.randint(0, 30))
                 for proc in world.running() for n in [rng.randint(1, 4) for _ in range(rng.randint(0, 2))]]
        if rng.random() < DESTROY_P:
            streams = rng.choice([[stream] for stream in STREAMS] + [list(STREAMS)])
            calls.append(Call(f"XGROUP DESTROY {' '.join(streams)}", lambda s=streams: self._destroy(s),
                              lambda _: None, at=rng.randint(0, 30)))
        if self.partitions is not None and (cut := self.partitions.draw([p.address for p in world.processes])):
            self.trace.append(f"{step}: {cut}")
        plan = draw_plan(rng, 0, 0)
        disruptor = Disruptor(world, rng)
        disruptor.draw()
        if self.stops is not None:
            self.stops.step(disruptor, calls)
        world.step_faults = disruptor
        self.trace.append(f"{step}: {plan.describe()}, {disruptor.describe()}; calls: "
                          f"{', '.join(c.label for c in calls)}")
        runner = StepRunner(world, rng)
        if self.stops is not None:
            self.stops.runner = runner
        self.faults.active, self.faults.events = True, []
        try:
            await runner.run(calls, plan)
        finally:
            self.faults.active = False
            if self.stops is not None:
                self.stops.runner = None
            end_clocks(world)
            if self.partitions is not None and (cut := self.partitions.end_step()):
                self.trace.append(f"{step}: {cut}")
            events = runner.events + disruptor.events + self.faults.events
            if events:
                self.trace.append(f"{step}: faults: " + ", ".join(events))
        clocks_counted(world, self.tally)
        if self.tail is not None and self.tail.due_at_end():
            self.trace.append(f"{step}: Redis restarted from the saved state after the calls")
        collect(calls)
        await world.converge_membership()
        await world.quiesce()
        if self.tail is not None:
            await self.tail.after(step)

    async def _restart_all(self) -> None:
        """The bound raised, every process restarted (one killed and started again after another)."""
        world = self.cluster
        self._room(ROOMY)
        for index, proc in enumerate(world.processes):
            if not proc.dead:
                world.kill(proc)
            self._started_again(index, proc)
            await world.converge_membership()
        await world.quiesce()

    def _started_again(self, index: int, proc: Process) -> None:
        """``proc`` (dead) replaced at its index by a process started again at its address, its leases expired."""
        world = self.cluster
        for group in range(world.config.shards):
            world.leases.expire(proc.holder, group)
        proc.member = False
        world.processes[index] = world._new(index)

    # -- invariants ----------------------------------------------------------------------------------
    def _acker(self) -> str | None:
        """The consumer of the process whose task sends the acknowledgement Redis takes now (its reader's, or its
        desk's quarantine write)."""
        proc = CURRENT.get()
        return None if proc is None else f"atp@{proc.address}"

    def check(self) -> None:
        world = self.cluster
        self._check_decided_and_owed(sum(len(p.facts.quarantine.owed) for p in world.processes if not p.dead))
        for address, (proc, _) in self.readers.items():  # a process gone forgets what it owed, by design
            if proc.dead or world.at(address) is not proc:
                self.owed.forget(f"atp@{address}")
        self.owed.applied(self)  # an entry owed: never decided again before its write, while its writer lives (E8)
        facts_fold_as_the_reference(world, [actor.ledger for actor in world.eng.actors])  # E1-E3, E8
        replay_equals_live(world, world.replayed(range(world.config.shards)))
        if world.sleeps.stale:
            raise Violation(world.sleeps.stale[0])  # R7: a woken process read a group taken meanwhile

    def _done(self) -> bool:
        running = self.cluster.running()
        readers = [self.current(proc) for proc in running]
        groups = [(held, held.groups.get(GROUP)) for held in self.redis.streams.values()]
        return all(mine is not None and not mine.pending and mine.last == held.last_id for held, mine in groups) \
            and not any(self.redis.hashes.values()) and not any(p.facts.quarantine.owed for p in running) \
            and all(reader is not None and not reader._retry_own_pending for reader in readers) \
            and not (self.new_addresses and departed_left(self)) \
            and not self.redis.letters.late  # a late script or setting still in flight lands before the end checks

    async def drain(self) -> None:
        """Redis answering, every process running, the readers read until nothing is pending nor new; then every entry
        is done once. Every process dead is started again (at its address: its consumer's), so that what only its
        reader tells is told (entries trimmed unread its reads crossed, ``unread.trimmed_unread_key``: kept until that
        consumer counted them, by design)."""
        world = self.cluster
        for index, proc in enumerate(world.processes):
            if proc.dead:
                self._started_again(index, proc)
        await world.converge_membership()
        await world.quiesce()
        await self._readers()
        for _ in range(DRAIN_TURNS):
            if self._done():
                break
            world.clock.advance(1000)
            if self.tail is not None:  # a lease nobody renews runs out as the clock moves on (``converge_membership``)
                world.unrenewed_leases_run_out()
            for proc in world.running():
                world.turn(proc)  # its leases renewed as the clock moves on
                reader = self.current(proc)
                if reader is not None:
                    await self._settled(proc.spawn(turn(reader, self.rng.random() < CLAIM_P, after_pass=True)))
            await world.quiesce()
        else:
            pending = sum(len(mine.pending) for held in self.redis.streams.values() for mine in held.groups.values())
            raise Violation(f"liveness: entries still pending after {DRAIN_TURNS} reader turns with Redis answering "
                            f"({pending} pending)")
        self.check()
        decided_once(self)
        swept(self)
        self.owed.written(self)
        self.tally.input_owed_watched += self.owed.seen
        proc = world.running()[0]
        reader = self.current(proc)
        assert reader is not None and not await proc.spawn(reader._read(None, block=None))  # nothing new: marks go
        marks_forgotten(self)
        self.tally.input_claimed += self.redis.claimed
        self.tally.input_sent += self.sends
        self.tally.input_faults += sum(self.faults.counts.values())
        self.redis.tags.tallied(self.tally)
        self.redis.letters.tallied(self.tally)
        self.tally.input_redelivered += self.redis.redelivered
        self.tally.input_passes_cut += self.redis.passes_cut
        self.tally.input_refusals_elsewhere += self.redis.refusals_elsewhere
        fold_of_produced(self, [actor.ledger for actor in world.eng.actors])
