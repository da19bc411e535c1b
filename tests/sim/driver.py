"""The seeded generator: steps of client calls under faults, then every invariant.

``python -m tests.sim --seeds 100000`` (``make sim SEEDS=100000``) runs many; ``--seed N`` replays one.
"""

from __future__ import annotations

import random
from contextlib import nullcontext

from atp_service.storage.snapshot_parts import PIECE_BYTES
from reservation._limits import MAX_DURATION_MS_CEILING
from tests.sim.checks import Acknowledged, Violation, check
from tests.sim.cluster import ClusterWorld
from tests.sim.commands import Commands
from tests.sim.defaults import defaults_applied
from tests.sim.disrupt import Disruptor
from tests.sim.facttimes import GRACE_MS, FactTimes
from tests.sim.faults import Call, StepRunner, collect, draw_plan
from tests.sim.full import RedisFull
from tests.sim.ids import SimIdClaims
from tests.sim.inputclocks import clocks_counted, step_skew
from tests.sim.invariants import (
    ServiceErrors,
    abandoned_reserves_whole,
    channels_follow_durable_state,
    durable_state_consistent,
    every_record_routed,
    every_shard_answers,
    no_route_without_record,
    one_record_per_id,
    snapshots_whole,
)
from tests.sim.jumps import ClockJumps
from tests.sim.partition import Partitions
from tests.sim.replay import held_after_loss, held_after_loss_leased, replay_equals_live
from tests.sim.settled import orders_settle
from tests.sim.settlefaults import SettleFaults, no_waits
from tests.sim.shardcount import facts_answer_alike
from tests.sim.shed import ShedCalls, Shedding, group_time
from tests.sim.shortgrace import GRACE_MS as SHORT_GRACE_MS
from tests.sim.shortgrace import SKEW_MS, SPREAD_MS, Graces, Stamps, engaged
from tests.sim.snapparts import PART_BYTES, READ_BYTES, PieceSizes
from tests.sim.stamps import StampChecker, Unanswered
from tests.sim.tailloss import TailLoss
from tests.sim.tally import Tally
from tests.sim.world import World

CRASH_P = 0.06
STOP_P = 0.04
TRACE_TAIL = 24
DEFAULT_STEPS = 60
"""Steps a seed runs unless ``--steps`` says otherwise (a replay names another count: the run ends elsewhere)."""


class Driver:
    def __init__(self, seed: int, tally: Tally | None = None, processes: int = 1,
                 late_across_steps: bool = False, retry_other_content: bool = False, lose_tail: bool = False,
                 clock_skew: bool = False, redis_full: bool = False, fact_times: bool = False,
                 shed: bool = False, one_key: bool = False, settle_faults: bool = False, groups: bool = False,
                 forward_streams: bool = False, short_grace: bool = False, partition: bool = False,
                 clock_jumps: bool = False, suspends: bool = False) -> None:
        """``late_across_steps``: with several processes, also order steps served past a step's end.
        ``retry_other_content``: with several processes, retries may carry other content than their
        id's first Reserve, at any process (R5 across processes: ``engine/ids.py``; off by default so
        that the multi-process seeds found before it draw as they did).
        ``lose_tail``: Redis may come back from older data (``tailloss.py``). ``clock_skew``: with several
        processes, each host's clock its own, within a bound, stepping back or forward (``skew.py``).
        ``redis_full``: Redis at its maxmemory refuses writes OOM now and then (``full.py``).
        ``fact_times``: facts stamped in the future, within the skew and past it (E7), or late past a grace
        window of an hour (E6) (``facttimes.py``). ``shed``: shards (and, with several processes, a
        process at its door) shed load now and then, the checker holding each refusal to "nothing done"
        (``shed.py``). ``one_key``: snapshots stored in one key whatever the seed (``snapparts.PIECE_BYTES``),
        so that a seed found before snapshots of several keys were simulated keeps the path it was found on.
        ``settle_faults``: a settle's fence lost, in doubt or late, and its reads timing out (``settlefaults.py``).
        ``groups``: Reserve lines naming location groups, channels of each strategy, and safety-stock defaults
        for new positions (``groups.py``). ``forward_streams``: with several processes, ReserveStream items of other
        processes' groups sent to their owners in the batch's turn (``streams.py``). ``short_grace``: a grace
        window of seconds, so that shards forget remembered facts, seal them and free kept deltas (E8, E9),
        and first sends stamped within it (``shortgrace.py``). ``partition``: with several processes, two of them
        cut off from each other over gRPC, Redis reached by both, for ticks or steps (``partition.py``).
        ``clock_jumps``: a clock jumping by hours at a tick of a step: the world's (suspended), or a host's wall
        clock ahead and back (``jumps.py``). ``suspends``: with several processes, leases counted on each host's
        lease clock over the world's clocks, with finite deadlines, some pauses a host's suspend (``suspends.py``)."""
        self.seed, self.processes = seed, processes
        self.rng = random.Random(seed)
        self.tally = tally or Tally()
        # Odd seeds run on a Redis Cluster: orders spanning shards go through sagas (engine/orders.py).
        # With several processes every seed does (no process holds every group).
        # The part size snapshots are written in (whole, or 2, 3 or 4 parts) goes with the seed too, and so do
        # the keys they are stored in (one, or 2 to 5, each instance started its own) and the parts recovery
        # reads a key in.
        part_bytes = PART_BYTES[seed // 2 % len(PART_BYTES)]
        pieces = None if one_key else PieceSizes(seed)
        self.short_grace = short_grace
        self.grace_ms = SHORT_GRACE_MS if short_grace else GRACE_MS if fact_times else MAX_DURATION_MS_CEILING
        skew_ms = SKEW_MS if short_grace else None
        self.world = World(tally=self.tally, cluster=seed % 2 == 1, part_bytes=part_bytes, grace_ms=self.grace_ms,
                           pieces=pieces, groups=groups, skew_ms=skew_ms) \
            if processes == 1 else \
            ClusterWorld(processes, self.rng, self.tally, part_bytes, random.Random(f"owner check {seed}"),
                         seed if clock_skew else None, self.grace_ms, pieces, groups, forward_streams, skew_ms,
                         seed if clock_jumps else None)
        self.world.log.reads.reply_bytes = READ_BYTES[seed // 40 % len(READ_BYTES)]
        self.world.log.faults = self.rng
        self.world.log.ids = SimIdClaims(seed, self.tally)  # a leased engine claims its ids (R5)
        self.full = RedisFull(seed, self.tally) if redis_full else None
        self.world.log.full = self.world.log.ids.full = self.full
        self.settle = SettleFaults(seed, self.tally) if settle_faults else None
        self.world.log.settle = self.settle
        self.partitions = Partitions(seed, self.tally) if partition and processes > 1 else None
        if clock_jumps and processes == 1:  # several: each process's made with its host's (``ClusterWorld``)
            self.world.jumps = ClockJumps(seed, self.tally, self.world.clock)
        if isinstance(self.world, ClusterWorld):
            if suspends:
                self.world.sleeps.start(seed)
            self.world.partitions = self.partitions
            self.world.network.across_steps = late_across_steps
            self.world.edge.streams.seed(f"streams {seed}")
        self.acked = Acknowledged()
        self.retry_other_content = retry_other_content
        self.commands = Commands(seed, self.rng, self.world, self.acked,
                                 other_content=processes == 1 or retry_other_content)
        self.shed = Shedding(seed, self.tally) if shed else None
        self.world.shed = self.commands.shed = self.shed
        self.shed_calls = ShedCalls(self.shed, self.commands.record, self.world.config.shards,
                                    lambda rid: group_time(self.world, rid),
                                    self.world.logged_facts) if self.shed else None
        self.commands.shed_calls = self.shed_calls
        self.times = FactTimes(seed, self.tally, late=not lose_tail) if fact_times else None
        self.commands.times = self.times
        self.graces = Graces(seed, self.tally) if short_grace and processes == 1 else None
        self.world.graces = self.graces
        if short_grace:
            self.commands.stamps = Stamps(SPREAD_MS, self.grace_ms)
        self.trace: list[str] = []
        self.tail = TailLoss(seed, self.acked) if lose_tail else None
        self.world.tail = self.tail
        if self.tail is not None:
            self.tail.witnessed = self.world.witnessed_loss  # one process: its instance; several: each taking
        self.errors = ServiceErrors()
        self.unanswered = Unanswered()  # the parts an order was given up without, their groups silent (R3, R8)
        self.stamps = StampChecker(self.world.log, self.commands.released, self.unanswered.parts)  # R6/R3; Q3
        if isinstance(self.world, ClusterWorld) and self.world.skew is not None:
            self.trace.append(f"hosts' wall clocks off the world's: {self.world.skew.describe()}")

    async def run(self, steps: int) -> None:
        step = -1
        try:
            with ServiceErrors(self.tail.allows if self.tail else None) as self.errors, self.unanswered, \
                    no_waits() if self.settle is not None else nullcontext(), \
                    engaged(self.tally) if self.short_grace else nullcontext():
                await self.world.boot()
                for step in range(steps):
                    await self.step(step)
                    await self.check()
                if self.partitions is not None:
                    self.partitions.heal()  # the run's end: the processes reach each other again
                await orders_settle(self.world)
                await self.stop()
                self.errors.check()
                await facts_answer_alike(self.commands.fact_batches, self.grace_ms)
                self.errors.check()
        except Exception as exc:
            tail = "\n  ".join(self.trace[-TRACE_TAIL:])
            seed = self.seed_flags()
            raise Violation(f"seed {seed}, after step {step}: {exc}\n  last steps:\n  {tail}\n"
                            f"replay: .venv/bin/python -m tests.sim --seed {seed}"
                            f"{f' --steps {steps}' if steps != DEFAULT_STEPS else ''} --trace") from exc

    def seed_flags(self) -> str:
        """The seed as the command line names it (with the flags that make it a multi-process seed)."""
        one_key = " --one-key" if self.world.pieces is None and PieceSizes(self.seed).bytes != PIECE_BYTES else ""
        return self._flags() + one_key + (" --groups" if self.world.groups else "")

    def _flags(self) -> str:
        world = self.world
        if not isinstance(world, ClusterWorld):
            return (f"{self.seed}{' --lose-tail' if self.tail else ''}{' --redis-full' if self.full else ''}"
                    f"{' --fact-times' if self.times else ''}{' --shed' if self.shed else ''}"
                    f"{' --settle-faults' if self.settle else ''}{' --short-grace' if self.short_grace else ''}"
                    f"{' --clock-jumps' if world.jumps else ''}")
        return (f"{self.seed} --processes {self.processes}" + (" --late-across-steps" if world.network.across_steps
                                                              else "")
                + (" --retry-other-content" if self.retry_other_content else "")
                + (" --lose-tail" if self.tail else "") + (" --clock-skew" if world.skew else "")
                + (" --redis-full" if self.full else "") + (" --fact-times" if self.times else "")
                + (" --shed" if self.shed else "") + (" --settle-faults" if self.settle else "")
                + (" --forward-streams" if world.forward_streams else "")
                + (" --short-grace" if self.short_grace else "") + (" --partition" if self.partitions else "")
                + (" --clock-jumps" if world.jumps else "") + (" --suspends" if world.sleeps.finite else ""))

    async def step(self, step: int) -> None:
        world, rng = self.world, self.rng
        if self.tail is not None and (drawn := self.tail.draw(world.log, world.channels, world.lease_keys())):
            self.trace.append(f"{step}: {drawn}")
        if self.tail is not None and isinstance(world, ClusterWorld) and \
                (drawn := self.tail.draw_leased(world.config.shards)):
            self.trace.append(f"{step}: {drawn}")
        if isinstance(world, ClusterWorld) and world.skew is not None:
            step_skew(world.skew, step, self.trace, self.tally)
        if rng.random() < 0.14:
            ms = rng.randint(0, 20_000)
            world.clock.advance(ms)
            self.trace.append(f"{step}: clock +{ms} ms")
        calls = [self.commands.call() for _ in range(rng.randint(1, 5))]
        for call in calls:
            if rng.random() < 0.3:
                call.at = rng.randint(1, 40)  # sent later: into a write pause, behind a coordinator
            if rng.random() < 0.3:
                call.give_up = rng.randint(0, 40)  # a client deadline or a disconnect
        cluster = world if isinstance(world, ClusterWorld) else None
        plan = draw_plan(rng, 0 if cluster else CRASH_P, 0 if cluster else STOP_P)  # several: kills, one at a time
        disruptor = self.disrupt(cluster) if cluster else None
        faults = plan.describe() + (f", {disruptor.describe()}" if disruptor and disruptor.plan else "")
        self.trace.append(f"{step}: {faults}; calls: " + "; ".join(_describe(c) for c in calls))
        if self.full is not None and (span := self.full.draw()):
            self.trace.append(f"{step}: {span}")
        if self.shed is not None and (shedding := self.shed.draw(world.config.shards, self.processes)):
            self.trace.append(f"{step}: {shedding}")
        if self.partitions is not None and (cut := self.partitions.draw([p.address for p in world.processes])):
            self.trace.append(f"{step}: {cut}")
        if world.jumps is not None and (jump := world.jumps.draw()):
            self.trace.append(f"{step}: {jump}")
        runner = StepRunner(world, rng)
        if self.settle is not None:
            self.settle.active = True
        try:
            ended = await runner.run(calls, plan)
        finally:
            if self.settle is not None:
                self.settle.active = False  # the quiesce after: Redis answers
            if self.full is not None and (refused := self.full.end_step()):  # the quiesce after: Redis has room
                self.trace.append(f"{step}: {refused}")
            if self.shed is not None and (shed := self.shed.end_step()):  # the quiesce after: nothing is shed
                self.trace.append(f"{step}: {shed}")
            if self.partitions is not None and (cut := self.partitions.end_step()):  # healed, unless it lasts
                self.trace.append(f"{step}: {cut}")
            if world.jumps is not None:
                world.jumps.end_step()
            events = runner.events + (disruptor.events if disruptor else [])
            if events:
                self.trace.append(f"{step}: faults: " + ", ".join(events))
        clocks_counted(world, self.tally)  # R6: every host's service clock counted on, and no group's far ahead
        lost_tail = self.tail is not None and (self.tail.restored_in_step or self.tail.due(None))
        if lost_tail:
            self.commands.answers.forget()  # R5: a Reserve Redis lost may be decided anew
        if self.tail is not None and self.tail.due(None):
            world.lose_tail()  # the step ended before its tick: Redis comes back from older data now
            self.trace.append(f"{step}: Redis restarted from the saved state after the calls")
        if ended == "crash":
            for call in calls:  # answered before the crash, but the client never read it
                if call.task is not None and call.task.done() and not call.task.cancelled():
                    call.task.exception()
        else:
            collect(calls, book=not lost_tail)  # a graceful stop answered what it could before it cancelled the rest
        if ended is not None:
            await world.crash_and_recover(rng)  # the callers that never heard back: nothing booked
            if self.graces is not None:
                self.graces.started(actor.ledger for actor in world.eng.actors)
            self.trace.append(f"{step}: {ended}, recovered")
        await world.converge_membership()
        await world.quiesce()
        if self.shed_calls is not None and ended != "crash" and not lost_tail:
            self.shed_calls.check(calls)  # a call refused for load changed nothing (a crash: memory ahead lost)
        elif self.shed_calls is not None:
            self.shed_calls.forget()
        await self.after_loss(step)
        await world.converge_channels()

    async def after_loss(self, step: int) -> None:
        """Redis lost a tail since this instance started: by the step's end (the owner check, every write and
        settle of the step done) the instance stopped to be restarted, or holds only what Redis holds."""
        world = self.world
        if isinstance(world, ClusterWorld):
            await held_after_loss_leased(world, self.tail, self.trace, step)
            return
        if self.tail is None or not self.tail.lost_since_start:
            return

        async def restart() -> None:
            await world.restart_after_failure(self.rng)
            self.trace.append(f"{step}: the service stopped to be restarted after Redis lost a tail, restarted")

        await held_after_loss(world, restart)

    def disrupt(self, world: ClusterWorld) -> Disruptor:
        """The step's membership faults, fired by the world at their ticks."""
        disruptor = Disruptor(world, self.rng)
        disruptor.draw()
        world.step_faults = disruptor
        return disruptor

    async def check(self) -> None:
        world = self.world
        self.errors.check()
        if isinstance(world, ClusterWorld) and world.sleeps.stale:
            raise Violation(world.sleeps.stale[0])  # R7: a stale read (``suspends.stale_reads``)
        snapshots_whole(world)  # first: a torn snapshot may not decode
        check(world, self.acked)
        self.commands.answers.check({rid: rec for actor in world.eng.actors
                                     for rid, rec in actor.ledger.reservations.items()})
        self.stamps.check()
        if self.times is not None:
            self.times.check(world)  # E6/E7: nothing stamped past the skew or late applied
        if world.groups:
            defaults_applied(world)  # Q4: each new position's default safety stock, in the log
        recovered = await world.recovered()
        replay_equals_live(world, recovered)
        durable_state_consistent(recovered)
        every_record_routed(world)
        one_record_per_id(world)
        no_route_without_record(world)
        abandoned_reserves_whole(world, self.commands.abandoned)
        self.commands.abandoned.clear()
        world.durable.catch_up()  # R2: no grant oversold (raises)
        channels_follow_durable_state(world, recovered)
        await every_shard_answers(world)

    async def stop(self) -> None:
        await self.world.stop()


def _describe(call: Call) -> str:
    timing = f"@{call.at}" if call.at else ""
    if call.give_up is not None:
        timing += f" gives up +{call.give_up}"
    return f"{call.label}{timing}"


async def run_seed(seed: int, steps: int = 60, tally: Tally | None = None, processes: int = 1,
                   one_key: bool = False, short_grace: bool = False) -> World:
    driver = Driver(seed, tally, processes, one_key=one_key, short_grace=short_grace)
    await driver.run(steps)
    return driver.world
