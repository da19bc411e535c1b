"""Several simulated service processes sharing one keyspace (``ownership = leases``): each its own real
``Engine`` over the shared ``SimLog`` (in leased mode: an owner epoch per group) and the shared
manual clock (``--clock-skew``: a clock of its host's, ``skew.py``), owning some shard groups
(``membership.SimMembership``), calling each other for order steps (``network.Network``), reached by
clients through ``edge.Edge``.

The driver kills processes (every task of one ends wherever it is; what it sent lands now, later or
never), pauses them (nothing of theirs runs, their leases run out, others take their groups; when they
run again every write they send is refused and they give their groups up), and stops them gracefully
(every group handed over); ``disrupt.Disruptor`` draws when. After each step ``converge_membership``
resumes and restarts processes and lets them renew and balance until every group is owned by exactly
one live process (liveness); the invariants then hold across processes, each group read at its owner.

Each running process's owner check (``Engine.check_logs_reach``: every served group's log end read) runs
at each step's end, its round trip drawing from a stream of its own (``checks``), and with ``--lose-tail``
at drawn ticks too: Redis then comes back from older data (``tailloss.py``) — logs, owner keys, fences
and lease keys alike — and the processes must notice it as the leased service does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Iterable
from typing import Any

from atp_service.engine.router import Engine
from atp_service.engine.shard import ShardActor
from atp_service.storage.durability import STORAGE_ERRORS, LogDiverged
from reservation import DomainError, Fact, Reservation, State
from reservation import _orders as orders
from reservation._limits import MAX_DURATION_MS_CEILING
from tests.sim.checks import Violation
from tests.sim.edge import Edge
from tests.sim.groups import configure
from tests.sim.jumps import ClockJumps
from tests.sim.leased import ProcessLog
from tests.sim.membership import Leases, SimMembership, leases_lost
from tests.sim.network import Network
from tests.sim.partition import Partitions
from tests.sim.process import CURRENT, Process, task_factory
from tests.sim.simlog import outranks
from tests.sim.skew import SkewedHosts
from tests.sim.snapparts import PieceSizes
from tests.sim.suspends import HostClocks
from tests.sim.tally import Tally
from tests.sim.world import World, pong_within

RESTART_P = 0.5
"""At the end of a step, the chance that a dead (or stopped) process is started again."""
CONVERGE_ROUNDS = 12
"""Rounds of every process renewing and balancing within which every group must have one owner."""


class ClusterWorld(World):
    def __init__(self, processes: int, rng: random.Random, tally: Tally | None = None,
                 part_bytes: int = 1 << 20, checks: random.Random | None = None, skew_seed: int | None = None,
                 grace_ms: int = MAX_DURATION_MS_CEILING, pieces: PieceSizes | None = None,
                 groups: bool = False, forward_streams: bool = False, skew_ms: int | None = None,
                 jumps_seed: int | None = None) -> None:
        """``skew_seed``: ``--clock-skew`` (``skew.py``), each host's clock drawn from it; None: one clock.
        ``jumps_seed``: ``--clock-jumps`` (``jumps.py``): hosts' wall clocks jumping by hours, drawn from it.
        ``pieces``: each process's ``snapshot_piece_bytes`` (``World.instance_config``)."""
        super().__init__(tally=tally, channels=False, cluster=True, part_bytes=part_bytes, grace_ms=grace_ms,
                         pieces=pieces, groups=groups, skew_ms=skew_ms)
        self.rng = rng
        self.forward_streams = forward_streams
        """``--forward-streams``: ReserveStream items of groups other processes own sent there (``streams.py``)."""
        self.skew = SkewedHosts(skew_seed, self.clock) if skew_seed is not None else None
        self.jumps = ClockJumps(jumps_seed, self.log.tally, self.clock) if jumps_seed is not None else None
        self.sleeps = HostClocks(self.clock, self.skew, self.jumps)  # each host's lease clock (``suspends.py``)
        self.checks = checks
        """The stream the owner checks' round trips draw from (theirs: the other draws stay as they were)."""
        self.leases = Leases()
        self.network = Network(self, rng)
        self.edge = Edge(self, rng)
        self.incarnations = 0
        self.every: list[Process] = []
        """Every process instance of the run, those gone and replaced too (``witnessed_loss``)."""
        self.processes = [self._new(i) for i in range(processes)]
        self._nobody: dict[int, ShardActor] = {}
        self.step_faults: Any = None
        """The step's membership faults (``disrupt.Disruptor``): fired at their ticks, awaited by ``busy``."""
        self.partitions: Partitions | None = None  # ``--partition``: processes cut off from each other over gRPC

    def _new(self, index: int, address: str = "") -> Process:
        self.incarnations += 1
        address = address or f"p{index}"
        log = ProcessLog(self.log, address)
        log.check_faults = self.checks
        # As ``AtpService``: each process its own clock (``skew.py``: its host's); without skew the world's.
        clock = self.clock if self.skew is None else self.skew.clock_for(address)
        if self.jumps is not None:  # ``--clock-jumps``: over the host's wall clock, skewed or not, set ahead or not
            skew = self.skew
            clock = self.jumps.clock_for(address, (lambda: skew.offsets[address]) if skew is not None else lambda: 0)
        config = self.instance_config()
        engine = Engine([], log, clock, config.engine_settings)
        engine.lease_clock = self.sleeps.lease_clock(address)  # R7: its host's clocks, the world's (not the machine's)
        if self.groups:
            configure(engine)  # every process from the one estate
        assert engine.ids is not None
        engine.ids.claims.retry = None  # a claim not answered is sent again at the next turn: nothing sleeps here
        proc = Process(address, self.incarnations, log, engine, config.shard_settings)
        proc.membership = SimMembership(proc, self)
        engine.remote = self.network.sender(proc)
        self.every.append(proc)
        return proc

    # -- what the driver, commands and checks read -------------------------------------------
    @property
    def eng(self) -> Any:
        return self.edge

    @property
    def fact_desk(self) -> Any:
        return self.edge

    async def judged_record(self, facts: list[Fact]) -> list[Any]:
        """RecordEvents at the process the call reached, E7 judged by each process's clock (``--fact-times``)."""
        return await self.edge.record(facts, "sim", judged=True)

    def at(self, address: str) -> Process | None:
        return next((p for p in self.processes if p.address == address), None)

    def running(self) -> list[Process]:
        return [p for p in self.processes if not p.dead and not p.frozen]

    def members(self) -> list[str]:
        """The live-process registry as a renewal reads it (a dead or long-paused entry timed out)."""
        return [p.entry for p in self.processes if p.member and not p.dead]

    def owner(self, group: int) -> Process | None:
        """The live process whose claim is the group's owner key now (it may still be recovering it); after
        Redis came back from older data, else the one whose lease it is and whose taking Redis lost (the
        owner key went back below it: it serves the group until a write of it is refused)."""
        epoch = self.log.owners[group]
        found = next((p for p in self.processes if not p.dead and p.log.epochs.get(group) == epoch), None)
        if found is None and self.tail is not None and self.tail.ever_lost:
            return next((p for p in self.processes if not p.dead and self._taking_lost(p, group)), None)
        return found

    def _taking_lost(self, proc: Process, group: int) -> bool:
        """``proc`` holds ``group``'s lease at an epoch above its owner key: only a loss of Redis's does that."""
        return self.leases.holder.get(group) == proc.holder and outranks(proc.log.epochs.get(group, ""),
                                                                         self.log.owners[group])

    def owner_actor(self, group: int) -> ShardActor:
        proc = self.owner(group)
        if proc is not None:
            return proc.engine.actors[group]
        if group not in self._nobody:
            self._nobody[group] = self.processes[0].engine.vacant(group)
        return self._nobody[group]

    def router_of(self, shard: int) -> Engine:
        proc = self.owner(shard)
        return (proc or self.processes[0]).engine

    # -- lifecycle ----------------------------------------------------------------------------
    async def boot(self) -> None:
        if not self._outside:
            self._outside = set(asyncio.all_tasks())
        asyncio.get_running_loop().set_task_factory(task_factory)
        for proc in self.processes:
            await proc.spawn(proc.members.renew())  # every process registered, then each takes its share
        for proc in self.processes:
            await proc.spawn(proc.members.balance())

    async def stop(self) -> None:
        for proc in self.processes:
            if not proc.dead:
                await proc.spawn(proc.engine.stop(snapshot=False))
        asyncio.get_running_loop().set_task_factory(None)

    def kill(self, proc: Process) -> None:
        self.log.tally.kills += 1
        proc.kill()
        self.log.kill(proc.log, self.rng)

    def pause(self, proc: Process) -> None:
        self.log.tally.process_pauses += 1
        proc.log.freeze()

    def expire(self, proc: Process, group: int) -> None:
        """The lease of a dead or paused process runs out (a running one renews it in time). A paused
        one's own clock mostly says so too when it runs again (``ShardActor.lease_until``: it answers
        nothing more for the group, reads included); else it was past that check already."""
        if proc.dead or proc.frozen:
            proc.member = False
            self.leases.expire(proc.holder, group)
            if not proc.dead and self.rng.random() < 0.7 and not self.sleeps.slept_now(proc.address):
                proc.engine.actors[group].lease_until = -math.inf

    def turn(self, proc: Process) -> None:
        """The process renews its leases and balances (its periodic loop)."""
        if not proc.dead and not proc.frozen:
            proc.background(proc.members.turn())

    def hand_over(self, proc: Process) -> None:
        if not proc.dead and not proc.frozen and proc.members.held:
            proc.background(proc.members.hand_over(self.rng.choice(sorted(proc.members.held))))

    def stop_process(self, proc: Process) -> None:
        """A graceful stop: every group handed over, the engine stopped; it may start again later."""
        self.log.tally.stops += 1

        async def stop() -> None:
            await proc.members.stop()
            await proc.engine.stop(snapshot=False)
            proc.exit()

        proc.background(stop())

    # -- between steps ----------------------------------------------------------------------------
    def cut(self, source: str, target: str) -> str | None:
        """``--partition``: what becomes of a call ``source`` sends ``target`` now (None: it passes)."""
        return None if self.partitions is None else self.partitions.fate(source, target)

    def on_tick(self, tick: int) -> None:
        if self.partitions is not None:
            self.partitions.tick(tick)
        if self.step_faults is not None:
            self.step_faults.fire(tick)
        if self.tail is not None and self.tail.due(tick):
            self.lose_tail()
        if self.tail is not None and self.tail.check_due(tick):
            for proc in self.running():
                proc.background(self._check_logs(proc))

    # -- Redis back from older data (``tailloss.py``), the owner check -------------------------------
    def lease_keys(self) -> dict[int, str]:
        return self.leases.holder

    def lose_tail(self) -> None:
        """Redis comes back from its saved state now, lease keys too. A restored lease of a holder gone since (dead, or
        paused long: its leases ran out meanwhile, as they would have) is dropped. The orders whose record the restarted
        groups held (in memory or in Redis) and no longer hold are noted: their parts in other groups may outlive them
        (``lost_orders``); one node's restore tears the orders whose records (the order's or a part's) it changed
        (``torn_orders``), and so does every node's restore those of them a step sent from what was lost changes a part
        of (on its way, or sent from the order's record its home's process holds in memory); every node's restore leaves
        the orders whose part it changed from what its process holds in memory to a saga that may go on from that memory
        (``outlived_orders``)."""
        assert self.tail is not None
        groups = range(self.config.shards) if self.tail.groups is None else sorted(self.tail.groups)
        logged = self._orders_in(groups)
        held = [(rid, rec) for g in groups for rid, rec in self.owner_actor(g).ledger.reservations.items()
                if rec.is_order or orders.order_of(rid) is not None]
        before = [*logged.items(), *held]
        settled = {rid: rec for rid, rec in self._orders_in(range(self.config.shards)).items() if rec.is_order}
        named = dict(self.leases.holder)  # each lease key before the restore: which it lost (``leases_lost``)
        super().lose_tail()
        leases_lost(self, named)
        after = self._orders_in(groups)
        self.lost_orders |= {rid for rid, rec in before if rec.is_order and rid not in after}
        torn = {orders.order_of(rid) or rid for rid, rec in before if after.get(rid) != rec}
        if self.tail.groups is None:  # the part's change lost where a saga of its order may have read it already
            self.outlived_orders |= {order_id for rid, rec in held
                                     if (order_id := orders.order_of(rid)) is not None and after.get(rid) != rec}
            # A step sent from what was lost lands on what is left, tearing its order as one node's restore does (an
            # order's EXPIRE applied to a part, the order HELD again at its home): one still on its way, or one its
            # home's process sends from the record it holds in memory until its owner check finds the loss.
            torn &= self.network.orders_in_flight() | {rid for rid, rec in held
                                                        if rec.is_order and after.get(rid) != rec}
        self.torn_orders |= torn
        # Confirmed before the loss: no Confirm can be refused any more, the part was lost after it.
        self.torn_confirmed |= {rid for rid in torn if rid in settled and (
            settled[rid].state == State.CONFIRMED or settled[rid].pending is not None)}
        running = {p.holder for p in self.processes  # a brief pause's leases run out no sooner than a running one's
                   if not p.dead and (not p.frozen or p.holder in self.leases.brief)}
        for group, holder in list(self.leases.holder.items()):
            if holder not in running:
                del self.leases.holder[group]

    def _orders_in(self, groups: Iterable[int]) -> dict[str, Reservation]:
        """The records of orders spanning groups, and of their parts, that ``groups`` hold in Redis now."""
        return {rid: rec for ledger, _ in self.replayed(groups) for rid, rec in ledger.reservations.items()
                if rec.is_order or orders.order_of(rid) is not None}

    def witnessed_loss(self, record: logging.LogRecord) -> bool:
        """Several processes: a shard's ``LogDiverged`` is expected only from a taking of its group that lived
        through a loss of the group's keys (``SimMembership.witnessed``): a process started, or a group taken,
        after the loss recovered the log as Redis held it then. The shard is the one whose failure it is (a
        process gone since included), else the one the line names (a stop's drain, ``shard_stop_diverged``)
        in the logging task's process. Leased, no instance claim is ever lost (``claim_lost``: one process only)."""
        cause = record.exc_info[1] if record.exc_info else None
        if not isinstance(cause, LogDiverged):
            return False
        failed = next(((p, a.shard) for p in self.every for a in p.engine.actors if a.failure is cause), None)
        proc, group = failed or (CURRENT.get(), getattr(record, "shard", None))
        return proc is not None and proc.members.witnessed(group)

    def unrenewed_leases_run_out(self) -> None:
        """A lease naming a running process for a group it does not hold — restored by Redis, or kept by a
        process whose write was refused FENCED because Redis lost its taking (the owner key went back to an
        older one): nothing renews it, and it runs out (here at once, as lease_ms passes between the
        driver's rounds) — then the group is taken again."""
        for group, holder in list(self.leases.holder.items()):
            proc = next((p for p in self.running() if p.holder == holder), None)
            if proc is not None and group not in proc.members.held:
                del self.leases.holder[group]

    async def owner_check(self) -> None:
        """``AtpService._check_owner`` of every running process (leased: its log-end read only)."""
        for proc in self.running():
            await proc.spawn(self._check_logs(proc))

    async def _check_logs(self, proc: Process) -> None:
        working = [actor for actor in proc.engine.actors if actor.failure is None]
        with contextlib.suppress(*STORAGE_ERRORS):  # Redis (or the process) unreachable: asked at the next check
            await proc.engine.check_logs_reach()
        self.log.tally.owner_check_stops += sum(actor.failure is not None for actor in working)

    def busy(self) -> bool:
        if self.step_faults is not None and self.step_faults.pending():
            return True
        if any(p.busy() for p in self.processes if not p.dead):
            return True
        me = asyncio.current_task()
        loops = {a._task for p in self.processes for a in p.engine.actors}
        return any(not t.done() for t in asyncio.all_tasks() if t is not me and t not in loops
                   and t not in self._outside)

    def request_maintenance(self) -> None:
        for proc in self.running():
            for actor in proc.engine.actors:
                actor.request_maintenance()

    async def converge_membership(self) -> None:
        """Paused processes run again, dead ones may start again; then every process renews and
        balances until every group is owned by exactly one live process (liveness)."""
        self.step_faults = None
        self.check_background()
        for proc in self.processes:
            proc.log.thaw()
        if not self.network.across_steps:
            self.network.arrive()
        for index, proc in enumerate(self.processes):
            if proc.dead:
                for group in range(self.config.shards):
                    self.leases.expire(proc.holder, group)
                proc.member = False
                if self.rng.random() < RESTART_P:
                    self.processes[index] = self._new(index)
        problems: list[str] = []
        for _ in range(CONVERGE_ROUNDS):
            if self.tail is not None:
                self.unrenewed_leases_run_out()
            for proc in self.running():
                self.turn(proc)
            await self.quiesce()
            problems = self.ownership_problems()
            if not problems:
                return
        raise Violation(f"liveness: after quiescing, {'; '.join(problems)}")

    def check_background(self) -> None:
        """Nothing a live process ran in the background (membership turns, hand-overs, vacating a
        group, a late step request) failed unexpectedly."""
        for proc in self.processes:
            if proc.failures:
                raise Violation(f"{proc.address}'s background work failed: {proc.failures[0]!r}")

    def ownership_problems(self) -> list[str]:
        """Every group served by exactly one live process, which holds its lease and its owner key."""
        problems = []
        for group in range(self.config.shards):
            serving = [p for p in self.processes if not p.dead and not p.engine.actors[group].vacant]
            if len(serving) != 1:
                problems.append(f"group {group} is served by {[p.address for p in serving]}")
                continue
            proc = serving[0]
            if self.leases.holder.get(group) != proc.holder or (proc.log.epochs.get(group) != self.log.owners[group]
                                                               and self.owner(group) is not proc):
                problems.append(f"group {group} is served by {proc.holder}, its lease is "
                                f"{self.leases.holder.get(group)}'s, its owner key epoch {self.log.owners[group]}")
        problems += [f"{p.address} is still handing over or giving up groups" for p in self.running()
                     if not p.members.settled()]
        return problems

    async def maintenance_pass(self) -> None:
        """Every process renews, balances and runs housekeeping (its periodic loops); a lease nobody
        renews has run out by then."""
        if self.tail is not None:
            self.unrenewed_leases_run_out()
        for proc in self.running():
            await proc.spawn(proc.members.turn())
        await asyncio.gather(*(proc.spawn(proc.engine.run_maintenance()) for proc in self.running()))
        self.check_background()

    async def answers(self, shard: int) -> str | None:
        """Liveness: the group's owner answers a trivial command within LIVENESS_ROUNDS rounds (None), else
        what it did instead (``pong_within``)."""
        try:
            return await pong_within(self.owner_actor(shard), self.log)
        except DomainError as exc:  # refused at once: no owner serves it, or the owner does not answer for it
            owner = self.owner(shard)
            return f"refused a trivial command at once at {owner.address if owner else 'no owner'}: {exc!r}"
