"""Housekeeping without a request: due holds expire (R3), resolved reservations past their
retention are forgotten (bounded R5 memory), shards snapshot when due; the oversold gauge."""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from atp_service.engine.clock import Clock
from atp_service.engine.clock_offset import CLOCK_OFFSET_EVERY_S, clock_offset_s, group_clock_lead_s
from atp_service.engine.composite import CompositeView
from atp_service.engine.coordinator import Coordinator
from atp_service.engine.gauges import OversoldSweep
from atp_service.engine.orphans import LeasedOrphans
from atp_service.instruments import GaugeChild
from atp_service.logs import EveryInterval
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.tasks import cancel_for_good, keep
from reservation import DomainError, Ledger, Reservation, ReserveView, State, View
from reservation import _operations as ops

if TYPE_CHECKING:
    from atp_service.engine.router import Engine

log = logging.getLogger(__name__)
EXPIRE_PER_TURN = 4096
"""Holds one housekeeping turn of a shard expires at most (~80 ms of the turn, a log entry of
~350 KB); the rest wait for the next pass (R3 goes on, a bounded step at a time)."""
EXPIRE_LINES_PER_CHANGE = 16_384
"""Lines one coordinated expiry (holds spanning one set of shards, expired together) carries at
most; the holds past it go in further changes of the same turn. Without it a turn's 4,096 holds
of up to ``max_lines`` (200) lines each made one change of ~800,000 lines: a log entry of tens of
MB and every shard it spans paused while it was decided and encoded (seconds: every call to them
waiting). Cost: one more pause and one more append per this many lines (a few hundred KB to ~1 MB
an entry). At least ``max_lines``: a hold is never split, one over it goes alone."""
EXPIRE_ORDERS_AT_ONCE = 64
"""Orders (holds spanning groups, expired by their sagas) this process expires at once; those due past
it wait for the next passes (``Housekeeper._orders_due``). Each pass spawned a saga for every order due, up to
``EXPIRE_PER_TURN`` per shard per pass, none waited for: 8,000 orders due together ran 8,000 sagas at
once, their steps filling every shard's mailbox, so a shopper's Reserve waited behind them (~0.75 s
each on a test cluster) and past ``mailbox_size`` was shed (R8). Cost: a backlog drains at this many
sagas' pace (each a few appends), ahead of no caller. The waiting orders are kept out of the expiry
queue: put back there, each pass took them again first, and while at least ``EXPIRE_PER_TURN`` of them
were due at a shard (their sagas stalled: a part's group not answering) no plain hold due after them
was ever reached (R3)."""
EXPIRY_DEFERRED_LOG_EVERY_S = 10.0
"""The housekeeper writes at most one ``expiry_deferred`` line this often, the next saying in ``left_out`` how
many were left out: an expiry not made durable is tried again at the next pass (every ``maintenance_interval_ms``),
and a line for each order (or change) at each pass, while a part's process or Redis did not answer, wrote
thousands a second. The holds stay queued: nothing is dropped (R3)."""
EVICT_PER_TURN = 10_000
"""Resolved reservations past their retention one housekeeping turn of a shard looks at, at most
(~20 ms of the turn); the rest are forgotten at the next passes. After a restart that followed
downtime a whole day's resolved reservations (hundreds of thousands) were past it at once, and
forgetting them in one turn held every shard, call and lease renewal for seconds. Forgetting is
no event in the log, so a replay sees the same whatever the bound (E10); kept a few passes longer
than the window, a record answers as a restored instance that still holds it does (R5)."""


def _bounded_by_lines(due: list[tuple[str, int]], ledger: Ledger) -> list[list[tuple[str, int]]]:
    """``due`` (holds of ``ledger``, each ``(id, expires_at)``) in order, cut into changes of at
    most ``EXPIRE_LINES_PER_CHANGE`` lines (a hold with more goes alone, whole)."""
    changes: list[list[tuple[str, int]]] = [[]]
    lines = 0
    for rid, expires_at in due:
        count = len(ledger.reservations[rid].lines)
        if changes[-1] and lines + count > EXPIRE_LINES_PER_CHANGE:
            changes.append([])
            lines = 0
        changes[-1].append((rid, expires_at))
        lines += count
    return changes


def expires_alone(shard: int, place: Callable[[str], int]) -> Callable[[Reservation], bool]:
    """Whether a hold of ``shard`` is one its own turn expires (``expire_alone``): not an order (its saga
    expires it, from a housekeeping pass), every line on ``shard``."""
    def alone(rec: Reservation) -> bool:
        return not rec.is_order and all(place(line.sku) == shard for line in rec.lines)

    return alone


def expire_alone(ledger: Ledger, now: int, place: Callable[[str], int]) -> None:
    """Inside a Reserve's turn on ``ledger``, before it is decided: the holds there whose TTL has passed
    and that this shard expires by itself (not spanning shards, not an order: passed over, left to the next
    pass, and the holds due after them still expired here) expire in the Reserve's entry. A hold past its TTL
    holds nothing when a Reserve is decided (R2, R3): left to the next pass, its units refused a Reserve that
    a Confirm of it at the same moment answered EXPIRED."""
    for rid in ledger.due_alone(now, expires_alone(ledger.shard, place), EXPIRE_PER_TURN):
        ops.expire(ledger, rid, now)


def expire_spanned(view: ReserveView, now: int, place: Callable[[str], int]) -> None:
    """``expire_alone`` on every shard a Reserve spanning shards has paused (``view``: the coordinator's), before
    it is decided: left to the next pass, a hold past its TTL on any of them refused it (R2, R3) while a
    Confirm of the hold answered EXPIRED, a refusal its id then replays for good (R5)."""
    for ledger in view.ledgers if isinstance(view, CompositeView) else ():  # the coordinator's only (R8: no raise)
        if ledger.expiry_due(now):
            expire_alone(ledger, now, place)


class Housekeeper:
    """Runs a pass every ``interval_s`` over every shard of ``engine``."""

    def __init__(self, engine: Engine, coordinator: Coordinator, interval_s: float) -> None:
        self._engine, self._coordinator, self._interval_s = engine, coordinator, interval_s
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()  # expiries across shards
        self._gauged_at = self._offset_at = -math.inf  # due at the first pass (monotonic: the host's uptime)
        self._orders_expiring = 0  # order sagas expiring now, at most EXPIRE_ORDERS_AT_ONCE
        self._orders_due: collections.OrderedDict[tuple[int, str], tuple[Ledger, int]] = collections.OrderedDict()
        self._deferred_lines = EveryInterval(EXPIRY_DEFERRED_LOG_EVERY_S)
        """Orders due, waiting for a saga (oldest first): (shard, id) -> (its ledger, its expiry). Taken
        from the front by ``popitem(last=False)``, O(1): a plain dict's first item after deletions from
        its front is found by scanning the deleted slots (until a resize), so dropping n stale orders
        in one go (a group handed over, orders released meanwhile) cost O(n²): 100,000 took ~5 s of
        the event loop, every shard, call and lease renewal waiting."""
        self._orphans = LeasedOrphans(engine)
        self._oversold: OversoldSweep | None = None  # a bounded slice of the arrays a pass (made at the first)
        self._offset_task: asyncio.Task[None] | None = None  # one measure at a time, apart from the expiries
        self._shard_gauges: dict[int, tuple[GaugeChild, GaugeChild, GaugeChild, GaugeChild]] = {}

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.get_running_loop().create_task(self._forever(), name="housekeeping")
        return self._task

    def stop(self) -> None:
        # Cancelled until they end, without waiting (``cancel_for_good``): a pass or an expiry inside
        # a redis-py call can lose one cancellation and would go on driving the shards.
        if self._task is not None:
            cancel_for_good(self._task)
        for task in [*self._background, *([self._offset_task] if self._offset_task else [])]:
            cancel_for_good(task)
        ids = getattr(self._engine, "ids", None)  # leased: the claims' sweep (a stand-in engine may have none)
        if ids is not None:
            ids.stop()

    async def run_pass(self) -> None:
        """Expire due holds, forget old resolved ones, ask every shard to snapshot when due."""
        engine = self._engine
        waits = []
        clock: Clock | None = None  # the clock ``now`` was read from
        now = 0
        for actor in engine.actors:
            # Its own clock: what its turn will see. Shards sharing one (all but the groups taken over)
            # read it once, unless a turn ran since (``submit`` may take it at once).
            if actor.clock is not clock:
                clock = actor.clock
                now = clock.now_ms()
            if actor.ledger.housekeeping_due(now):
                clock = None
                try:
                    waits.append(actor.submit(self._expire_work))
                except DomainError as exc:  # mailbox full or Redis down: the next pass tries again
                    log.debug("shard %d: housekeeping deferred: %s", actor.shard, exc)
            actor.request_maintenance()
        self._start_order_expiries()
        if engine.orders is not None:
            engine.orders.drive_unsettled()
            if engine.remote is not None:  # leased: orphaned parts are looked for here (one process: at start)
                self._orphans.run_pass(self._spawn)
        if engine.ids is not None:  # leased: the claims of the records served here kept (R5, ``ids``)
            engine.ids.refresh_step()
        for fut in waits:
            try:
                await fut
            except DomainError as exc:
                log.debug("expiry deferred: %s", exc)
        self._oversold = self._oversold or OversoldSweep(engine.actors)
        # OVERSOLD_SLOTS_PER_PASS slots, not all; a sweep once a second at most (OVERSOLD_SWEEP_EVERY_S)
        engine.metrics.oversold_units.set(self._oversold.step(time.monotonic()))
        if time.monotonic() - self._gauged_at >= 1.0:  # one per shard, no pass over the arrays
            self._gauged_at = time.monotonic()
            # Each grows and shrinks with no hold due and nothing to forget: set here, not in an expiring turn;
            # a vacant shard's (its group handed over) reads 0, not what this process last held of it.
            for actor in engine.actors:
                gauges = self._shard_gauges.get(actor.shard) or self._gauges_of(actor.shard)
                live, remembered, positions, dedupe = gauges
                ledger = actor.ledger
                live.set(ledger.live_reservations)
                remembered.set(len(ledger.reservations))
                positions.set(len(actor.positions()))
                dedupe.set(len(ledger.memory))
        measuring = self._offset_task is not None and not self._offset_task.done()
        if time.monotonic() - self._offset_at >= CLOCK_OFFSET_EVERY_S and not measuring:
            self._offset_at = time.monotonic()  # a round trip to Redis: no pass waits for it
            self._offset_task = asyncio.get_running_loop().create_task(self._measure_clock_offset())

    def _gauges_of(self, shard: int) -> tuple[GaugeChild, GaugeChild, GaugeChild, GaugeChild]:
        """A shard's series of the gauges set once a second, found once (``labels`` of each, each second)."""
        metrics, label = self._engine.metrics, str(shard)
        gauges = self._shard_gauges[shard] = (
            metrics.live_reservations.labels(label), metrics.remembered_reservations.labels(label),
            metrics.positions.labels(label), metrics.dedupe_entries.labels(label))
        return gauges

    async def _measure_clock_offset(self) -> None:
        engine = self._engine
        clocks = engine.metrics.clock
        clocks.group_lead.set(group_clock_lead_s(engine.clock, (actor.clock for actor in engine.actors)))
        try:
            clocks.offset.set(await clock_offset_s(engine.log_client, engine.clock))
        except STORAGE_ERRORS as exc:  # Redis away: the shards say so; measured again next time
            log.debug("clock offset not measured: %r", exc)
        except Exception:  # a gauge: said, never raised into a task nobody awaits
            log.exception("clock offset not measured")

    def _expire_work(self, ledger: Ledger, now: int) -> None:
        """Inside the shard's turn: expire what is due here; a hold spanning shards goes through the
        coordinator, after this batch."""
        place = self._engine.place
        across: dict[tuple[int, ...], list[tuple[str, int]]] = {}
        for rid in ledger.due(now, EXPIRE_PER_TURN):  # the rest at the next pass: no turn as long as an outage
            rec = ledger.reservations[rid]
            if rec.is_order:  # its parts hold the units: its saga expires it, through every part
                self._orders_due[(ledger.shard, rid)] = (ledger, rec.expires_at)
                continue
            shards = {place(line.sku) for line in rec.lines} | {ledger.shard}
            if len(shards) == 1:
                ops.expire(ledger, rid, now)
            elif not self._coordinator.together:  # left by the single writer: never expired here (docs/OPERATIONS.md)
                # Not queued again: refused at each pass, such holds took their shard's EXPIRE_PER_TURN, earliest
                # first, and no hold due after them expired there. Logged once per process (its log read again).
                log.warning("hold %s spans shards %s: made before the keyspace moved to ownership=leases, it cannot "
                            "expire here; its units stay held", rid, sorted(shards))
            else:
                across.setdefault(tuple(sorted(shards)), []).append((rid, rec.expires_at))
        self._start_order_expiries()
        for shards_of, due in across.items():  # one coordinated change per set of shards, not one per hold
            for change in _bounded_by_lines(due, ledger):  # ...and per EXPIRE_LINES_PER_CHANGE lines
                self._spawn(self._expire_across(list(shards_of), ledger, change))
        actor = self._engine.actors[ledger.shard]
        # R5/R7: not a record resolved by an entry in flight (its undo needs it); one vacated meanwhile
        # was drained first, nothing of it in flight.
        unsure_from = actor.in_flight_since() if actor.ledger is ledger else None
        for rid in ledger.evict(now, EVICT_PER_TURN, unsure_from):  # the rest at the next passes
            self._engine.routes.forget_evicted(ledger.shard, rid)

    async def _expire_across(self, shards: list[int], home: Ledger, due: list[tuple[str, int]]) -> None:
        """Holds of ``home`` spanning ``shards``, due, expired in one coordinated change (at most
        ``EXPIRE_PER_TURN`` holds and ``EXPIRE_LINES_PER_CHANGE`` lines, one log entry per shard):
        one pause and one append per hold made a backlog after downtime drain at a few hundred holds
        a second, their units still held (Reserves refused, channels offered less), and every call
        to those shards queued behind thousands of pauses. A hold confirmed or released meanwhile
        is left as it is (``ops.expire``)."""
        def expire_all(view: View, now: int) -> None:
            for rid, _ in due:
                ops.expire(view, rid, now)

        try:
            await self._coordinator.run(shards, home.shard, expire_all)
        except BaseException as exc:  # whatever kept it from being durable: the next pass tries again (R3)
            self._deferred(exc, due[0][0], len(due))
            for rid, expires_at in due:
                home.requeue_expiry(expires_at, rid)
            if not isinstance(exc, Exception):
                raise

    def _start_order_expiries(self) -> None:
        """Sagas for the orders waiting (``_orders_due``), oldest first, up to ``EXPIRE_ORDERS_AT_ONCE``
        running. One whose group is no longer served here (its next owner expires it) or that is no
        longer the hold that fell due (resolved meanwhile) is dropped, as ``Ledger.due`` skips it."""
        waiting, actors = self._orders_due, self._engine.actors
        while waiting and self._orders_expiring < EXPIRE_ORDERS_AT_ONCE:
            (shard, rid), (ledger, expires_at) = waiting.popitem(last=False)
            rec = ledger.reservations.get(rid)
            if actors[shard].ledger is not ledger or rec is None or rec.state != State.HELD \
                    or rec.expires_at != expires_at:
                continue
            self._orders_expiring += 1
            self._spawn(self._expire_order(ledger, rid, expires_at))

    async def _expire_order(self, home: Ledger, rid: str, expires_at: int) -> None:
        orders = self._engine.orders
        assert orders is not None
        try:
            await orders.expire(rid, home.shard)
        except Exception as exc:  # whatever kept it from being durable: the next pass tries again
            self._deferred(exc, rid, 1)
            home.requeue_expiry(expires_at, rid)
        finally:
            self._orders_expiring -= 1

    def _deferred(self, exc: BaseException, first: str, holds: int) -> None:
        """An expiry of ``holds`` holds (``first`` among them) not durable now, tried again at the next pass (R3):
        said at most once per ``EXPIRY_DEFERRED_LOG_EVERY_S``, with how many such lines were left out."""
        fields = self._deferred_lines.fields(event="expiry_deferred", reservation_id=first, holds=holds,
                                             error=repr(exc))
        if fields is None:
            return
        log.warning("expiry of %d holds (%s%s) deferred: %r", holds, first, ", ..." if holds > 1 else "", exc,
                    extra=fields)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        keep(self._background, coro)

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.run_pass()
            except (DomainError, *STORAGE_ERRORS) as exc:
                log.warning("housekeeping pass failed: %s", exc)
            # Anything else is a bug: it ends the task, which the service watches (``app.watched``):
            # expiry (R3) never stops unseen behind a health check saying SERVING.
