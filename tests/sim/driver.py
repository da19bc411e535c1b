"""The seeded generator: steps of client calls under faults, then every invariant.

``python -m tests.sim --seeds 100000`` (``make sim SEEDS=100000``) runs many; ``--seed N`` replays one.
"""

from __future__ import annotations

import asyncio
import random
from contextlib import nullcontext

from atp_service.engine.orphans import CONFIRMED_ASKED_EVERY_MS, ORPHAN_AGE_MARGIN_MS, given_back, gives_up
from atp_service.storage.snapshot_parts import PIECE_BYTES
from reservation import State
from reservation import _orders as orders
from reservation._limits import MAX_DURATION_MS_CEILING
from tests.sim.checks import Acknowledged, Violation, check, orders_hold_what_they_decided
from tests.sim.cluster import ClusterWorld
from tests.sim.commands import Commands
from tests.sim.disrupt import Disruptor
from tests.sim.facttimes import GRACE_MS, FactTimes
from tests.sim.faults import Call, StepRunner, collect, draw_plan
from tests.sim.full import RedisFull
from tests.sim.ids import SimIdClaims
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
from tests.sim.settlefaults import SettleFaults, no_waits
from tests.sim.shardcount import facts_answer_alike
from tests.sim.shed import ShedCalls, Shedding
from tests.sim.snapparts import PART_BYTES, READ_BYTES, PieceSizes
from tests.sim.stamps import StampChecker
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
                 shed: bool = False, one_key: bool = False, settle_faults: bool = False) -> None:
        """``late_across_steps``: with several processes, also order steps served past a step's end.
        ``retry_other_content``: with several processes, retries may carry other content than their
        id's first Reserve, at any process (R5 across processes: ``engine/ids.py``; off by default so
        that the multi-process seeds found before it draw as they did).
        ``lose_tail``: Redis may come back from older data (``tailloss.py``). ``clock_skew``: with several
        processes, each host's clock its own, within a bound, stepping back now and then (``skew.py``).
        ``redis_full``: Redis at its maxmemory refuses writes OOM now and then (``full.py``).
        ``fact_times``: facts stamped in the future, within the skew and past it (E7), or late past a grace
        window of an hour (E6) (``facttimes.py``). ``shed``: shards (and, with several processes, a
        process at its door) shed load now and then, the checker holding each refusal to "nothing done"
        (``shed.py``). ``one_key``: snapshots stored in one key whatever the seed (``snapparts.PIECE_BYTES``),
        so that a seed found before snapshots of several keys were simulated keeps the path it was found on.
        ``settle_faults``: a settle's fence lost, in doubt or late, and its reads timing out (``settlefaults.py``)."""
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
        self.grace_ms = GRACE_MS if fact_times else MAX_DURATION_MS_CEILING
        self.world = World(tally=self.tally, cluster=seed % 2 == 1, part_bytes=part_bytes, grace_ms=self.grace_ms,
                           pieces=pieces) \
            if processes == 1 else \
            ClusterWorld(processes, self.rng, self.tally, part_bytes, random.Random(f"owner check {seed}"),
                         seed if clock_skew else None, self.grace_ms, pieces)
        self.world.log.reads.reply_bytes = READ_BYTES[seed // 40 % len(READ_BYTES)]
        self.world.log.faults = self.rng
        self.world.log.ids = SimIdClaims(seed, self.tally)  # a leased engine claims its ids (R5)
        self.full = RedisFull(seed, self.tally) if redis_full else None
        self.world.log.full = self.world.log.ids.full = self.full
        self.settle = SettleFaults(seed, self.tally) if settle_faults else None
        self.world.log.settle = self.settle
        if isinstance(self.world, ClusterWorld):
            self.world.network.across_steps = late_across_steps
        self.acked = Acknowledged()
        self.retry_other_content = retry_other_content
        self.commands = Commands(seed, self.rng, self.world, self.acked,
                                 other_content=processes == 1 or retry_other_content)
        self.shed = Shedding(seed, self.tally) if shed else None
        self.world.shed = self.commands.shed = self.shed
        self.shed_calls = ShedCalls(self.shed, self.commands.record, self.world.config.shards,
                                    self.world.clock.now_ms, self.world.logged_facts) if self.shed else None
        self.commands.shed_calls = self.shed_calls
        self.times = FactTimes(seed, self.tally, late=not lose_tail) if fact_times else None
        self.commands.times = self.times
        self.trace: list[str] = []
        self.tail = TailLoss(seed, self.acked) if lose_tail else None
        self.world.tail = self.tail
        if self.tail is not None:
            self.tail.witnessed = self.world.witnessed_loss  # one process: its instance; several: each taking
        self.errors = ServiceErrors()
        self.stamps = StampChecker(self.world.log, self.commands.released)  # R6/R3 by each group's stamps; Q3
        if isinstance(self.world, ClusterWorld) and self.world.skew is not None:
            self.trace.append(f"hosts' wall clocks off the world's: {self.world.skew.describe()}")

    async def run(self, steps: int) -> None:
        step = -1
        try:
            with ServiceErrors(self.tail.allows if self.tail else None) as self.errors, \
                    no_waits() if self.settle is not None else nullcontext():
                await self.world.boot()
                for step in range(steps):
                    await self.step(step)
                    await self.check()
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
        return self._flags() + one_key

    def _flags(self) -> str:
        world = self.world
        if not isinstance(world, ClusterWorld):
            return (f"{self.seed}{' --lose-tail' if self.tail else ''}{' --redis-full' if self.full else ''}"
                    f"{' --fact-times' if self.times else ''}{' --shed' if self.shed else ''}"
                    f"{' --settle-faults' if self.settle else ''}")
        return (f"{self.seed} --processes {self.processes}" + (" --late-across-steps" if world.network.across_steps
                                                              else "")
                + (" --retry-other-content" if self.retry_other_content else "")
                + (" --lose-tail" if self.tail else "") + (" --clock-skew" if world.skew else "")
                + (" --redis-full" if self.full else "") + (" --fact-times" if self.times else "")
                + (" --shed" if self.shed else "") + (" --settle-faults" if self.settle else ""))

    async def step(self, step: int) -> None:
        world, rng = self.world, self.rng
        if self.tail is not None and (drawn := self.tail.draw(world.log, world.channels, world.lease_keys())):
            self.trace.append(f"{step}: {drawn}")
        if self.tail is not None and isinstance(world, ClusterWorld) and \
                (drawn := self.tail.draw_leased(world.config.shards)):
            self.trace.append(f"{step}: {drawn}")
        if isinstance(world, ClusterWorld) and world.skew is not None and (stepped := world.skew.maybe_step_back()):
            self.trace.append(f"{step}: {stepped}")
            self.tally.clock_steps_back += 1
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
            events = runner.events + (disruptor.events if disruptor else [])
            if events:
                self.trace.append(f"{step}: faults: " + ", ".join(events))
        lost_tail = self.tail is not None and (self.tail.restored_in_step or self.tail.due(None))
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
            await self.after_loss_leased(step, world)
            return
        if self.tail is None or not self.tail.lost_since_start:
            return
        await world.owner_check()
        if world.must_restart:
            await world.restart_after_failure(self.rng)
            self.trace.append(f"{step}: the service stopped to be restarted after Redis lost a tail, restarted")
            await world.quiesce()
            return
        try:
            replay_equals_live(world, await world.recovered())
        except Violation as exc:
            raise Violation(f"R7: Redis lost acknowledged entries and the instance, still serving, did not "
                            f"notice by its owner check: {exc}") from None
        world.forget_loss()

    async def after_loss_leased(self, step: int, world: ClusterWorld) -> None:
        """Several processes: every running one's owner check runs at each step's end (finding nothing
        unless Redis lost a tail). After a loss, a group found short was given up: it is taken again (the
        processes renew and balance), and then every group's owner holds exactly what Redis holds."""
        await world.owner_check()
        if self.tail is None or not self.tail.stale:
            return
        await world.converge_membership()
        await world.quiesce()
        try:
            replay_equals_live(world, await world.recovered())
        except Violation as exc:
            raise Violation(f"R7: Redis lost acknowledged entries and a process, still serving the group, did not "
                            f"notice by its owner check: {exc}") from None
        world.forget_loss()
        self.trace.append(f"{step}: every group served from what Redis holds after it lost a tail")

    def disrupt(self, world: ClusterWorld) -> Disruptor:
        """The step's membership faults, fired by the world at their ticks."""
        disruptor = Disruptor(world, self.rng)
        disruptor.draw()
        world.step_faults = disruptor
        return disruptor

    async def check(self) -> None:
        world = self.world
        self.errors.check()
        snapshots_whole(world)  # first: a torn snapshot may not decode
        check(world, self.acked)
        self.stamps.check()
        if self.times is not None:
            self.times.check(world)  # E6/E7: nothing stamped past the skew or late applied
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


def replay_equals_live(world: World, recovered: list) -> None:  # type: ignore[type-arg]
    """E10/R7: with nothing in flight, memory equals a fresh start from the log."""
    for actor, (ledger, seq) in zip(world.eng.actors, recovered, strict=True):
        live, fresh = actor.ledger, ledger
        if seq != actor.seq:
            raise Violation(f"E10: shard {actor.shard} memory at entry {actor.seq}, log at {seq}")
        if sorted(live.store.items()) != sorted(fresh.store.items()):
            raise Violation(f"E10: shard {actor.shard} positions differ from a replay of the log")
        if live.reservations != fresh.reservations:
            raise Violation(f"E10: shard {actor.shard} reservations differ from a replay of the log")


def _describe(call: Call) -> str:
    timing = f"@{call.at}" if call.at else ""
    if call.give_up is not None:
        timing += f" gives up +{call.give_up}"
    return f"{call.label}{timing}"


async def run_seed(seed: int, steps: int = 60, tally: Tally | None = None, processes: int = 1,
                   one_key: bool = False) -> World:
    driver = Driver(seed, tally, processes, one_key=one_key)
    await driver.run(steps)
    return driver.world


ORDER_ROUNDS = 20
"""Housekeeping passes, Redis answering every write, within which every order's saga must finish."""


async def orders_settle(world: World) -> None:
    """Liveness of sagas: with Redis answering, housekeeping carries every order that stopped
    half-way (a crash, a caller gone, a write in doubt) through to a settled state, and gives up every
    held part of an order Redis lost (``orphans.LeasedOrphans``)."""
    if world.eng.orders is None:
        return
    looked_for = None
    if isinstance(world, ClusterWorld):
        world.network.faulty = False  # "with Redis answering": and the processes reaching each other
        world.network.arrive()
        # The late step requests are served first: a late ReservePart of a lost order makes a part that
        # holds units, to be aged past the scan's threshold with the others (not missed by the look below).
        await world.quiesce()
        looked_for = _lost_parts_due(world, None)
    pending: list[str] = []
    for _ in range(ORDER_ROUNDS):
        passing = asyncio.ensure_future(world.maintenance_pass())  # its writes land as quiesce pumps Redis
        await world.quiesce()
        await passing
        if isinstance(world, ClusterWorld) and world.tail is not None:
            # A group given up in the pass (a write refused FENCED: Redis lost the taking) is taken again
            # before its orders are read: a group nobody serves reads as empty.
            await world.converge_membership()
        pending = [rid for a in world.eng.actors for rid, rec in a.ledger.reservations.items()
                   if rec.is_order and rec.pending is not None]
        if pending:
            continue
        if not _lost_parts_held(world, None):
            check_orders_settled(world, looked_for)
            return
        if isinstance(world, ClusterWorld):
            # A lost part still holding made after the clock was moved (a saga step served in a pass, a
            # group served again showing one) is aged past the threshold too.
            looked_for = _lost_parts_due(world, looked_for)
    check_orders_settled(world, looked_for)  # a lost order's part made by then still holding: named
    raise Violation(f"liveness: after {ORDER_ROUNDS} housekeeping passes, orders still pending: {pending[:5]}; "
                    f"parts of orders Redis lost still holding units: {_lost_parts_held(world, None)[:5]} "
                    f"(housekeeping looked for those made at or before {looked_for})")


def _lost_parts_due(world: ClusterWorld, looked_for: int | None) -> int | None:
    """Parts of orders whose record Redis lost, made after ``looked_for`` (None: ever) and still holding
    units: the clock moves past the age at which housekeeping looks for them (``orphans.LeasedOrphans``);
    the time such a part was created at or before must hold nothing once housekeeping ran (``looked_for``
    as it was: no such part)."""
    due = [(rid, group) for rid, group, created in _lost_parts(world) if looked_for is None or created > looked_for]
    if not due:
        return looked_for
    age = world.config.limits.max_ttl_seconds * 1000 + ORPHAN_AGE_MARGIN_MS
    # A confirmed part whose order lives at another process is asked about at a group's sweep once every
    # CONFIRMED_ASKED_EVERY_MS: the clock moves past that too.
    confirmed = any(world.eng.actors[group].ledger.reservations[rid].state == State.CONFIRMED for rid, group in due)
    world.clock.advance(max(age, CONFIRMED_ASKED_EVERY_MS) if confirmed else age)
    # Parts are stamped by their groups' clocks (``--clock-skew``: none reads below the world's plus the
    # lowest host offset), and the scan ages them by those clocks.
    return world.clock.now_ms() + (world.skew.lowest_offset() if world.skew else 0) - age


def _lost_parts(world: World) -> list[tuple[str, int, int]]:
    """(id, group, created at) of each part that holds units of one of ``lost_orders`` (not opened again
    since), or of one of ``outlived_orders`` or ``torn_orders`` settled in a final state that gave its units
    up (``orphans.gives_up``; a held one whose units its FULFILLED order fulfilled is kept: they left on_hand,
    Redis lost that with it), or that keeps committed units such an order released (``orphans.given_back``;
    a confirmed part of a lost order is kept: its units are a paid order's, committed until shipped)."""
    records = {rid: rec for a in world.eng.actors for rid, rec in a.ledger.reservations.items()}
    return [(rid, actor.shard, rec.created_at) for actor in world.eng.actors
            for rid, rec in actor.ledger.reservations.items()
            if (order_id := orders.order_of(rid)) is not None and (
                (any(line.held for line in rec.lines)
                 and ((order_id in world.lost_orders and order_id not in records)
                      or (_torn(world, order_id) and gives_up(records.get(order_id), rec))))
                or (_torn(world, order_id) and order_id in records and given_back([records[order_id]], rec)))]


def _torn(world: World, order_id: str) -> bool:
    return order_id in world.outlived_orders or order_id in world.torn_orders


def _lost_parts_held(world: World, created_by: int | None) -> list[str]:
    """The parts ``_lost_parts`` finds created at or before ``created_by`` (None: ever), as a failure names them."""
    return [f"{rid} in group {group} created at {created}" for rid, group, created in _lost_parts(world)
            if created_by is None or created <= created_by]


def check_orders_settled(world: World, lost_looked_for: int | None = None) -> None:
    ledgers = [actor.ledger for actor in world.eng.actors]
    records = {rid: rec for ledger in ledgers for rid, rec in ledger.reservations.items()}
    orders_hold_what_they_decided(records, lost_orders=world.lost_orders, torn_orders=world.torn_orders,
                                  place=world.eng.place, torn_confirmed=world.torn_confirmed,
                                  lost_looked_for=lost_looked_for, outlived=world.outlived_orders)
