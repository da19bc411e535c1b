"""One simulated service: the real engine, shard actors, fact desk and channel desk over ``SimLog`` and
``SimChannelStore`` with a manual clock.

Nothing here sleeps or touches a socket, so a seed decides everything: the same seed replays
the same run. The driver (``driver.py``) sends commands under faults (``faults.py``), crashes the
process and recovers it; ``checks.py`` and ``invariants.py`` say whether the result is right.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from atp_service.app.keyspace import replaced_said
from atp_service.channels.desk import ChannelDesk
from atp_service.config import ServiceConfig
from atp_service.engine.clock import Clock, ManualClock, SystemClock
from atp_service.engine.router import Engine
from atp_service.engine.shard import ShardActor
from atp_service.intake.facts import FactDesk
from atp_service.storage.durability import LogDiverged
from atp_service.storage.records import SnapshotRecord
from atp_service.storage.snapshot_parts import PIECE_BYTES
from reservation import Fact, Ledger, Limits, decode_entry
from reservation._limits import MAX_DURATION_MS_CEILING
from tests.sim import replaycache
from tests.sim.durable import DurableTracker, MemoryAheadOfLog
from tests.sim.factjudge import judged_record
from tests.sim.groups import configure
from tests.sim.historyfacts import HistoryFacts
from tests.sim.replaycache import ReplayCache, fresh_replay
from tests.sim.simchannels import ESTATE, DeskRunner, SimChannelStore
from tests.sim.simlog import SimLog
from tests.sim.tally import Tally

if TYPE_CHECKING:
    from tests.sim.jumps import ClockJumps
    from tests.sim.shed import Shedding
    from tests.sim.shortgrace import Graces
    from tests.sim.snapparts import PieceSizes
    from tests.sim.tailloss import TailLoss

START_MS = 1_700_000_000_000
QUIET_ROUNDS = 400
WALL_TIME_NEVER_S = 1e9
"""A wall-clock bound of the service's that a seed never reaches, however slow the machine (``sim_config``)."""
LIVENESS_ROUNDS = 8


async def pong_within(actor: Any, log: Any) -> str | None:
    """None when ``actor`` answers a trivial command within LIVENESS_ROUNDS rounds of the simulated
    log (pumped between rounds: an answer may wait for its entry to be durable); else what it did
    instead, for the finding: a refusal, or no answer."""
    fut: Any = actor.submit(lambda _ledger, _now: "pong")
    for _ in range(LIVENESS_ROUNDS):
        for _ in range(4):
            await asyncio.sleep(0)
        if fut.done():
            if fut.exception() is not None:
                return f"refused a trivial command: {fut.exception()!r}"
            return None if fut.result() == "pong" else f"answered a trivial command {fut.result()!r}"
        log.pump("ok")
    return f"did not answer a trivial command within {LIVENESS_ROUNDS} rounds"
"""Rounds (each: a few event-loop turns, then Redis answers) within which an idle shard must answer."""


def sim_config(shards: int = 3, part_bytes: int = 1 << 20, grace_ms: int = MAX_DURATION_MS_CEILING,
               piece_bytes: int = PIECE_BYTES, skew_ms: int | None = None) -> ServiceConfig:
    """Small enough that batches, pipelines, snapshots and cross-shard orders all happen often;
    snapshots past ``part_bytes`` are written in parts (``snapparts.PART_BYTES``), past ``piece_bytes`` in
    several keys (``snapparts.PIECE_BYTES``). ``grace_ms``: E6's window (``--fact-times`` a smaller one,
    ``facttimes.GRACE_MS``; ``--short-grace`` seconds, ``shortgrace.GRACE_MS``; else no fact is ever late),
    ``skew_ms``: E7's (None: the service's default)."""
    # Nothing forgotten: every ack stays checkable. TTLs drawn are 1-30 s: parts of orders Redis lost are
    # looked for past the longest (``orphans.LeasedOrphans``), within a run's clock.
    limits = Limits(retention_ms=MAX_DURATION_MS_CEILING, fact_grace_ms=grace_ms, max_ttl_seconds=30,
                    default_ttl_seconds=30,
                    fact_future_skew_ms=Limits().fact_future_skew_ms if skew_ms is None else skew_ms)
    # Nothing may depend on wall time, or a seed would not replay: no shedding by queue delay, and a
    # failed snapshot is retried at the next maintenance, not after a wall-clock backoff. A shard's stop
    # waits for its appends as long as the driver takes to answer them (``ShardActor.stop`` gives up on its
    # drain after 2 x redis_timeout_s: on a machine slow enough it did mid-seed, and the seed went another
    # way, ``test_a_seed_takes_the_same_path_however_slow_the_machine``), and no snapshot falls due by wall
    # time (``snapshot_interval_s``).
    config = ServiceConfig(port=0, metrics_port=-1, shards=shards, demo=False, auth="off", batch_max=6,
                           pipeline_depth=3, mailbox_size=256, snapshot_every_entries=7, limits=limits,
                           max_queue_delay_ms=10**9, snapshot_retry_max_s=1e-6, snapshot_part_bytes=part_bytes,
                           snapshot_piece_bytes=piece_bytes,
                           redis_timeout_s=WALL_TIME_NEVER_S, snapshot_interval_s=WALL_TIME_NEVER_S)
    return config


class World:
    def __init__(self, shards: int = 3, tally: Tally | None = None, channels: bool = True,
                 cluster: bool = False, part_bytes: int = 1 << 20, grace_ms: int = MAX_DURATION_MS_CEILING,
                 pieces: PieceSizes | None = None, groups: bool = False, skew_ms: int | None = None) -> None:
        self.log = SimLog(tally, together=not cluster)
        self.channels = SimChannelStore(self.log)
        self.clock = ManualClock(START_MS)
        self.jumps: ClockJumps | None = None  # ``--clock-jumps``: the host's clock jumping by hours (``jumps.py``)
        self.service_clock: Clock = self.clock
        """The running instance's clock: the world's, or (``--clock-jumps``) the product's over its host's."""
        self.log.now_ms = self.clock.now_ms  # claims draw epochs no lower than the time (as Redis's TIME)
        self.pieces = pieces
        """Each instance's ``snapshot_piece_bytes`` (None: ``PIECE_BYTES``, the default: one key)."""
        self.graces: Graces | None = None  # each instance's grace window (None: the one it was made with)
        self.config = sim_config(shards, part_bytes, grace_ms, PIECE_BYTES if pieces is None else pieces.bytes, skew_ms)
        self.engine: Engine | None = None
        self.facts: FactDesk | None = None
        self.desk: DeskRunner | None = None
        self.with_channels = channels
        self.recoveries = 0
        self.history_facts = HistoryFacts(self.log)
        """The facts and shipments of the log's history, each entry read once (``historyfacts.py``)."""
        self._replays = ReplayCache(lambda: self.config.limits)
        """The checks' replays of the log (``recovered``, ``replayed``): each shard's kept while what it was
        made from holds, carried on over entries appended since (``replaycache.py``)."""
        self._outside: set[asyncio.Task[Any]] = set()
        self.durable = self._tracker()
        self.channels.on_landed = self.durable.published
        self.in_flight = MemoryAheadOfLog(self.log, shards, self.config.limits)
        self.tail: TailLoss | None = None  # ``--lose-tail``: Redis may come back from older data
        self.shed: Shedding | None = None  # ``--shed``: shards, a process at its door, shedding load
        self.lost_orders: set[str] = set()
        """Several processes: orders whose record Redis lost while a part of theirs may live on in another
        group (``cluster.ClusterWorld.lose_tail``); leased, housekeeping looks for them once past the longest
        TTL (``orphans.LeasedOrphans``): the run's end checks they hold nothing (``settled.orders_settle``)."""
        self.torn_orders: set[str] = set()
        self.outlived_orders: set[str] = set()
        """Several processes: orders a part of which Redis, back whole from older data, lost a change of that
        its process still held in memory (``cluster.ClusterWorld.lose_tail``): a saga going on from that memory
        may record a decision the part no longer shows — held under an order that holds nothing, until
        housekeeping finds it past the longest TTL (``orphans.LeasedOrphans``): the run's end checks it did."""
        self.torn_confirmed: set[str] = set()
        """Torn orders already confirmed (or with a change in flight) when their node lost records."""
        """Several processes: orders one node's restore tore (``checks.orders_hold_what_they_decided``)."""
        self.groups = groups
        """``--groups``: the estate's location groups and safety-stock defaults configured (``groups.py``)."""
        self.must_restart = False
        """The service decided to stop to be restarted (``AtpService._must_restart``: exit status 4)."""
        self.log.on_fenced.append(self._claim_refused)

    @property
    def eng(self) -> Engine:
        assert self.engine is not None
        return self.engine

    @property
    def fact_desk(self) -> FactDesk:
        assert self.facts is not None
        return self.facts

    async def recovered(self, fresh: bool = False) -> list[tuple[Ledger, int]]:
        """Start-up exactly as the service does it: snapshot (read by its own code, ``LogReads``: one key or
        several), then the log after it, per shard. For the checks (``fresh`` False) the ledgers may be those
        of an earlier call (``ReplayCache``): read them, never change them; ``boot`` gives its own to shards."""
        out = []
        for shard in range(self.config.shards):
            snap = await self.log.reads.load_snapshot(shard)  # answered at once: no draws
            entries = list(self.log.logs[shard])
            if fresh:
                out.append(self._replay(shard, snap, entries))
            else:  # the snapshot is what the bytes it read decode to (the same bytes, the same snapshot)
                out.append(self._replays.replay(shard, self.log.reads.read.pop(shard), snap, entries))
        return out

    def replayed(self, shards: Iterable[int]) -> list[tuple[Ledger, int]]:
        """``shards`` recovered from what Redis holds now: snapshot, then the log after it (for the checks:
        read them, never change them, as ``recovered``'s)."""
        # read at once: the checks draw no random numbers
        return [self._replays.replay(shard, *self.log.stored(shard)) for shard in shards]

    def _replay(self, shard: int, snap: SnapshotRecord | None, entries: list[tuple[int, bytes]]) -> tuple[Ledger, int]:
        return fresh_replay(shard, self.config.limits, snap, entries)

    async def boot(self) -> None:
        if self.tail is not None:
            self.tail.lost_since_start = False  # a new instance: what it recovers is what Redis holds
        if not self._outside:  # the tasks running before this service started are not its own
            self._outside = set(asyncio.all_tasks())
        self.config = self.instance_config()
        # Before recovery reads the log: a dead instance's late writes are refused.
        await self.log.claim(self.config.shards)
        self.channels.epoch = self.log.epoch
        self.forget_loss()
        actors = []
        # A new process's clock: the world's, or (``--clock-jumps``) the product's over its host's.
        clock: ManualClock | SystemClock = self.clock if self.jumps is None else self.jumps.clock_for()
        self.service_clock = clock
        for ledger, seq in await self.recovered(fresh=True):
            actors.append(ShardActor(ledger.shard, ledger, self.log, clock, self.config.shard_settings, seq))  # type: ignore[arg-type]
            actors[-1].on_failure.append(self._shard_failed)
        clock.advance_floor(max(a.ledger.clock for a in actors))
        self.engine = Engine(actors, self.log, clock, self.config.engine_settings)  # type: ignore[arg-type]
        if self.groups:
            configure(self.engine)  # as the service, from the estate, before any call
        for actor in self.engine.actors:
            actor.start()  # no maintenance timer: the driver runs maintenance as a call
        self.facts = FactDesk(self.engine, "quarantine", 1000)
        if self.with_channels:
            desk = ChannelDesk(self.engine, ESTATE, self.channels, clock, self.config.channel_settings)  # type: ignore[arg-type]
            self.desk = DeskRunner(desk, self._desk_lost)
            await self.desk.start()

    def instance_config(self) -> ServiceConfig:
        """The configuration an instance starts with: its own ``snapshot_piece_bytes`` (``pieces``), and
        ``fact_grace_ms`` (``graces``, one process with ``--short-grace``)."""
        config = self.config if self.graces is None else self.graces.next_instance(self.config)
        if self.pieces is None:
            return config
        return dataclasses.replace(config, snapshot_piece_bytes=self.pieces.next_instance())

    async def crash_and_recover(self, rng: random.Random) -> None:
        """kill -9: every task of the process gone wherever it was (shards, callers, coordinators, the
        desk); what was sent lands now, later or never; then a restart.

        What the dead instance had already due runs before the restart — a shard's failure report
        (``ShardActor._ended``, a done callback: one turn after its task ended) — as it does while its
        tasks end: the error it logs is judged as that instance's (``TailLoss.allows``:
        ``lost_since_start``), never as the new one's. (With no task left to cancel the gather below
        awaits nothing, and a shard that found its log short in the crash's very turn was reported
        only once the new instance had started, as though it had not lived through the loss.)"""
        me = asyncio.current_task()
        doomed = [t for t in asyncio.all_tasks() if t is not me and t not in self._outside]
        for task in doomed:
            task.cancel()
        await asyncio.gather(*doomed, return_exceptions=True)
        await asyncio.sleep(0)  # the callbacks already due: the dead instance's, before the restart
        self.log.crash(rng)
        self.channels.crash(rng)
        self.engine = None
        self.recoveries += 1
        await self.boot()

    # -- Redis losing an acknowledged tail (``tailloss.py``) ----------------------------------------
    def lose_tail(self) -> None:
        """Redis comes back from its saved state now; until the service restarts (or is found to hold only
        what Redis holds) the checks comparing its memory with the log wait, and so does C4's."""
        assert self.tail is not None
        self.tail.restore(self, self.lease_keys())
        self.channels.on_landed = lambda _channel, _updates: None

    def lease_keys(self) -> dict[int, str]:
        """The groups' lease keys Redis holds (several processes: ``cluster.ClusterWorld``)."""
        return {}

    def forget_loss(self) -> None:
        """Memory is what Redis holds again (a start, or nothing was lost): the references start over."""
        self.must_restart = False
        if self.tail is None or not self.tail.stale:
            return
        self.tail.stale = False
        shards, limits = self.config.shards, self.config.limits
        self.durable = self._tracker()
        self.channels.on_landed = self.durable.published
        self.in_flight = MemoryAheadOfLog(self.log, shards, limits)

    def _tracker(self) -> DurableTracker:
        """What has been durable, from the log's history (C4's reference, R2)."""
        tracker = DurableTracker(self.log, self.config.shards, self.config.limits, ESTATE)
        tracker.shown = lambda channel, key: key in self.channels.state[channel]
        return tracker

    def check_in_flight(self) -> None:
        if self.tail is None or not self.tail.stale:
            self.in_flight.check(self.eng.actors)

    def witnessed_loss(self, _record: logging.LogRecord) -> bool:
        """One process: whether the instance that logged a shard's ``LogDiverged`` (or its claim lost) lived
        through a loss (``TailLoss.allows``): Redis came back from older data since it started (``boot``)."""
        return self.tail is not None and self.tail.lost_since_start

    def _shard_failed(self, actor: ShardActor) -> None:
        """``AtpService._on_shard_failed``: a shard that found its log short stops the instance. Any other
        failure is a finding of ``every_shard_answers``."""
        if self.tail is not None and self.tail.lost_since_start and isinstance(actor.failure, LogDiverged):
            self.must_restart = True

    def _desk_lost(self) -> bool:
        """The desk found ``StreamLost``: it reads every channel again (``ChannelDesk._relink``), the instance
        serving on, allowed only where Redis came back from older data since it started (or the instance stops
        for it already); else a finding (False: raised)."""
        allowed = self.must_restart or (self.tail is not None and self.tail.lost_since_start)
        self.log.tally.channel_relinks += allowed
        return allowed

    def _claim_refused(self) -> None:
        """``AtpService._on_replaced``: with one instance, Redis can only have lost its claim."""
        if replaced_said(self.log, "sim:"):  # type: ignore[arg-type]
            raise AssertionError("one instance was told a newer one claimed the keyspace")
        self.must_restart = True

    async def owner_check(self) -> None:
        """``AtpService._check_owner``, which runs every owner_check_s: here at each step's end."""
        if await self.log.still_owner():
            await self.eng.check_logs_reach()

    async def restart_after_failure(self, rng: random.Random) -> None:
        """``atp-service serve`` exits 4 (a graceful stop, Redis answering), and its supervisor starts it."""
        stopping = asyncio.ensure_future(self._graceful_stop())
        for _ in range(QUIET_ROUNDS):
            for _ in range(4):
                await asyncio.sleep(0)
            if stopping.done():
                break
            self.log.pump("ok")
            self.channels.pump("ok")
        else:
            raise AssertionError("a stop after a failure never finished (liveness)")
        stopping.result()
        self.log.tally.tail_restarts += 1
        await self.crash_and_recover(rng)

    async def _graceful_stop(self) -> None:
        if self.desk is not None:
            await self.desk.stop()
            await self.desk.desk.stop()
        await self.eng.stop(snapshot=True)

    # -- hooks a world of several processes fills in (``cluster.ClusterWorld``) -------------------
    def on_tick(self, tick: int) -> None:
        """An event-loop turn of a step has passed."""
        if self.tail is not None and self.tail.due(tick):
            self.lose_tail()

    async def converge_membership(self) -> None:
        """After a step: one process owns every shard already."""

    def router_of(self, shard: int) -> Engine:
        """The engine routing the records of ``shard`` (its owner's)."""
        return self.eng

    async def judged_record(self, facts: list[Fact]) -> list[Any]:
        """RecordEvents with E7 judged by the service's clock, as its edge does (``--fact-times``)."""
        return await judged_record(self.fact_desk, self.service_clock.now_ms(), self.config.limits, facts)

    async def maintenance_pass(self) -> None:
        await self.eng.run_maintenance()

    async def stop(self) -> None:
        """The end of the seed: the service stops (its tasks would outlive the loop otherwise)."""
        if self.desk is not None:
            await self.desk.stop()
        await self.eng.stop(snapshot=False)

    def busy(self) -> bool:
        """Work left: a shard with messages, appends in flight or in doubt, or any task of the service
        or its callers still running (a coordinator between two pauses leaves every shard quiet)."""
        actors = self.eng.actors
        if any(a._inflight or a._doubt or not a._mailbox.empty() or a._set_aside for a in actors):
            return True
        me, loops = asyncio.current_task(), {a._task for a in actors}
        return any(not t.done() for t in asyncio.all_tasks() if t is not me and t not in loops
                   and t not in self._outside)

    def request_maintenance(self) -> None:
        for actor in self.eng.actors:
            actor.request_maintenance()

    async def quiesce(self) -> None:
        """Let everything in flight finish with Redis answering every write."""
        for _ in range(QUIET_ROUNDS):
            for _ in range(4):
                await asyncio.sleep(0)
            if self.must_restart:
                return  # the service stops to be restarted: what it has left is settled by the next start
            if self.log.pending or self.channels.pending:
                self.log.pump("ok")
                self.channels.pump("ok")
                continue
            if not self.busy():
                return
            self.request_maintenance()
        raise AssertionError("simulation stuck: shards never settled (liveness)")

    async def converge_channels(self) -> None:
        """C4: with Redis answering, the desk publishes until nothing waits (the clock moved past any
        throttle interval); then what the streams hold is compared with the durable state."""
        if self.desk is None:
            return
        for _ in range(50):
            await self.quiesce()
            if self.desk.idle():
                return
            due = self.desk.next_due()
            if due is not None and due > self.service_clock.now_ms():  # due by the desk's clock
                self.clock.advance(due - self.service_clock.now_ms())
            self.desk.kick()
        raise AssertionError("channel desk never converged (liveness)")

    async def answers(self, shard: int) -> str | None:
        """Liveness: a trivial command to this shard is answered within LIVENESS_ROUNDS rounds (None), else
        what it did instead (``pong_within``)."""
        return await pong_within(self.eng.actors[shard], self.log)

    def logged_fact_ids(self) -> set[tuple[str, str]]:
        """(source, event_id) of every fact the log ever recorded as applied (``logged_facts``'), the history
        read once (``historyfacts.py``). Read it, never change it."""
        self.history_facts.catch_up()
        if replaycache.CHECK:
            fresh = {(f.source, f.event_id) for f in self.logged_facts()}
            assert self.history_facts.ids == fresh, "the facts logged, read once and afresh, differ"
        return self.history_facts.ids

    def logged_facts(self) -> list[Fact]:
        """Every fact the log ever recorded as applied (the history is never trimmed)."""
        from reservation._bulk import loaded_facts
        from reservation._events import CountsLoaded, FactApplied

        out = []
        for entries in self.log.history.values():
            for _, data in entries:
                for e in decode_entry(data).events:
                    if isinstance(e, FactApplied):
                        out.append(e.fact)
                    elif isinstance(e, CountsLoaded):
                        out += loaded_facts(e)
        return out
