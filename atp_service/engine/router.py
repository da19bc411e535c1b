"""The engine: routes commands to shard actors and coordinates the few that span shards.

A SKU lives on one shard (stable hash), so a single-SKU reservation is one actor message. A reservation
whose lines span shards is decided by the ``Coordinator``: all-or-nothing (R2), whatever happens to its caller (R8).
A change of a record (Confirm, Release, Fulfil) is routed to its shards by ``changes.RecordChanges``.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any

from atp_service.config import EngineSettings
from atp_service.engine.capacity import record_refusal
from atp_service.engine.changes import RecordChanges, stopped_changes
from atp_service.engine.clock import Clock
from atp_service.engine.coordinator import Coordinator
from atp_service.engine.fanout import STATE_NAMES, count_refused, count_reservations, gather_by_shard, one_as_list
from atp_service.engine.ids import IdGuard
from atp_service.engine.maintenance import Housekeeper, expire_alone, expire_spanned
from atp_service.engine.orders import Orders
from atp_service.engine.owned import OwnedShards
from atp_service.engine.parts import Remote
from atp_service.engine.routes import Routes
from atp_service.engine.shard import ShardActor
from atp_service.instruments import CounterChild
from atp_service.metrics import EngineMetrics
from atp_service.storage.ids import IdClaims
from atp_service.storage.log import LogStore
from reservation import (
    DomainError,
    GroupPolicy,
    Ledger,
    Moved,
    NotFound,
    Quantities,
    Reason,
    Reservation,
    ReserveCommand,
    ReserveView,
    ResourceExhausted,
    Unavailable,
)
from reservation import _operations as ops
from reservation._bulk import room_refusal
from reservation._order_anew import Anew, forgotten, forgotten_now

log = logging.getLogger(__name__)


_UNDECIDED = Unavailable("not decided")


class Engine(RecordChanges):
    def __init__(self, actors: Sequence[ShardActor], log_store: LogStore, clock: Clock,
                 settings: EngineSettings, metrics: EngineMetrics | None = None) -> None:
        """``actors``: every shard's; none (leased groups): every shard vacant until its group is taken."""
        self.limits = settings.limits
        self.metrics = metrics or EngineMetrics()
        self.clock = clock
        self._log = log_store
        self._settings = settings
        self.remote: Remote | None = None
        """Where an order's step on another process's group is sent (``parts``; None: not sent)."""
        self._n = len(actors) or settings.shards
        OwnedShards.__init__(self, actors, self._n)
        self._coordinator = Coordinator(self.actors, log_store, clock, self.place, self.metrics)
        self._changes = set()
        self.routes = Routes(self.actors, self.place)
        self._home, self._routing = self.routes.homes, self.routes.attempts
        for actor in self.actors:
            self.routes.adopt(actor)
        self.ids = IdGuard(self, IdClaims(log_store.nodes.run, log_store.keys)) if log_store.leased else None  # R5
        if self.ids is not None:  # leased: each Reserve's id claimed first; one process pays nothing for it
            self.reserve = self.ids.reserve  # type: ignore[method-assign]
        self.orders: Orders | None = None
        """Sagas for orders spanning groups, where Redis cannot land one change of them (a cluster, leases)."""
        if not getattr(log_store, "together", True):
            self.orders = Orders(self)
            self.orders.find_pending(actor.ledger for actor in self.actors)
        self._housekeeper = Housekeeper(self, self._coordinator, settings.maintenance_interval_ms / 1000)
        # Location groups a Reserve line may name, with each channel's strategy (set from the estate).
        self.group_policies: dict[str, GroupPolicy] = {}
        self.default_group_policy: GroupPolicy | None = None
        self._tallies: dict[int, CounterChild] = {}  # ``_tally``

    @property
    def log_client(self) -> Any:
        """The Redis client of the log's reads (its writes, and the quarantine stream's: ``log_writer``)."""
        return self._log.client

    def set_safety_defaults(self, by_location: dict[str, int]) -> None:
        """Q4 defaults for new positions (from the estate); each ledger logs them when it applies them."""
        self._safety_defaults = dict(by_location)
        for actor in self.actors:
            actor.ledger.safety_defaults = dict(by_location)

    def place(self, sku: str) -> int:
        return zlib.crc32(sku.encode()) % self._n

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> asyncio.Task[None]:
        """Start every shard and housekeeping; returns housekeeping's task (the service watches it)."""
        self._started = True
        for actor in self.actors:
            actor.start()
        return self._housekeeper.start()

    async def stop(self, snapshot: bool = True) -> None:
        self._housekeeper.stop()
        if self.orders is not None:
            self.orders.stop()  # a saga stopped half-way is driven on after the restart
        # At once: each drains up to 2 x redis_timeout_s while Redis does not answer (64 in turn: minutes).
        actors = list(self.actors)
        outcomes = await asyncio.gather(*(actor.stop() for actor in actors), return_exceptions=True)
        # Whatever one shard's stop raised (a bug), the rest of the stop runs, and its failure is raised after.
        await stopped_changes(self._changes)  # each answered by its shards' stop; none left pending past it
        # A failed shard's memory is not to be trusted (its log is), nor one whose stop raised. Once Redis does not
        # answer one final snapshot, no other is tried: each would wait out redis_timeout_s in turn, for nothing the
        # logs hold not (R7).
        for actor, outcome in zip(actors, outcomes, strict=True) if snapshot else ():
            if actor.failure is None and outcome is None and not await actor.final_snapshot():
                break
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    # -- reservation commands ---------------------------------------------------------
    async def reserve(self, cmd: ReserveCommand) -> tuple[Reservation, bool]:
        rid, lines = cmd.reservation_id, cmd.lines
        if len(lines) == 1:  # ``Routes.route`` of one line (every unary Reserve), written out: its shard
            # (``place``), its home noted before the shard decides (a retry must meet it there), one attempt more
            shard = zlib.crc32(lines[0].sku.encode()) % self._n
            home = self._home.setdefault(rid, shard)
            self._routing[rid] = self._routing.get(rid, 0) + 1
            shards = None if home == shard else {shard, home}  # None: on ``home`` alone (no set to make)
        else:
            shards, home = self.routes.route(cmd)
            shards = shards if len(shards) > 1 else None
        if shards is not None and self.orders is not None:
            if self._log.leased:  # its saga runs where its home is owned
                self._all_local(cmd.reservation_id, (home,) if self.remote else (home, *sorted(shards)))
            return await self._reserve_order(cmd, home)
        reply: asyncio.Future[tuple[Reservation, bool]] | None = None
        try:
            if shards is None:  # most Reserves: its actor's future awaited directly, without run's frame
                actor = self.actors[home]
                reply = actor.submit(partial(self._reserve_alone, cmd))
                result: tuple[Reservation, bool] = await reply
            else:
                ledger = self.actors[home].ledger
                result = await self._coordinator.run(sorted(shards), home, lambda view, now: self._reserve_checked(
                    ledger, view, cmd, now), self._count_late)
        except BaseException as exc:
            self.routes.unroute(rid)
            count_refused(self.metrics, exc)
            if reply is not None and isinstance(exc, asyncio.CancelledError):  # its caller gone: counted as answered
                self._count_late(reply if reply.done() and not reply.cancelled() else actor.answer_kept(reply))
            raise
        # ``Routes.done`` and ``_count``, written out (every unary Reserve): one attempt fewer, the
        # route kept; the outcome counted on its counter's child, found once per outcome (``_tally``).
        attempts = self._routing
        left = attempts.pop(rid) - 1
        if left:
            attempts[rid] = left
        rec, replayed = result
        (self._tallies.get(0 if replayed else rec.state) or self._tally(rec, replayed)).value += 1  # ``inc()``
        return result

    def _all_local(self, rid: str, shards: Iterable[int]) -> None:
        """``Moved`` (nothing done) naming the first of ``shards`` this process does not own."""
        try:
            for shard in shards:
                self.local(shard)
        except Moved:
            self.routes.unroute(rid)
            raise

    async def _reserve_order(self, cmd: ReserveCommand, home: int) -> tuple[Reservation, bool]:
        """An order spanning groups (``Orders``): its saga once begun, and its route, ends whatever the caller does."""
        saga = self.orders.reserve(cmd, home)  # type: ignore[union-attr]
        rid = cmd.reservation_id
        saga.add_done_callback(lambda task: self.routes.done(rid) if not task.cancelled() and task.exception() is None
                               else self.routes.unroute(rid))
        try:
            result: tuple[Reservation, bool] = await self.orders.waits.wait(saga)  # type: ignore[union-attr]
        except DomainError as exc:
            count_refused(self.metrics, exc)
            raise
        except asyncio.CancelledError:  # its caller gone: a saga begun is counted once it has decided (R8)
            self._count_late(saga)
            raise
        self._count(result)
        return result

    async def reserve_many(self, cmds: Sequence[ReserveCommand], asked: Callable[[list[Any]], None] | None = None
                           ) -> list[tuple[Reservation, bool] | DomainError]:
        """Independent reservations: one actor message per shard; one spanning shards: ``reserve``'s task, leased its
        id checked again (a hand-over drops routes, R5). ``asked(out)``: in the batch's turn, its shards asked."""
        out: list[tuple[Reservation, bool] | DomainError] = [_UNDECIDED] * len(cmds)
        items = enumerate(cmds) if self.ids is None else await self.ids.claimed(cmds, out)  # leased: claimed first
        groups: dict[int, list[int]] = {}
        spanning: list[int] = []
        for i, cmd in items:
            shards, home = self.routes.placement(cmd)
            if len(shards) == 1:
                self.routes.note(cmd.reservation_id, home)  # route(), without placing it again
                groups.setdefault(home, []).append(i)
            else:
                spanning.append(i)  # routed by reserve()
        across = [([i], asyncio.ensure_future(one_as_list(partial(self.reserve, cmds[i])))) for i in spanning]

        def decided(idx: list[int], results: list[Any] | None) -> None:
            """When the shard has answered (``results``), or will never decide them (None)."""
            for n, i in enumerate(idx):
                rid = cmds[i].reservation_id
                if results is not None and not isinstance(results[n], DomainError):
                    self.routes.done(rid)
                else:
                    self.routes.unroute(rid)

        await gather_by_shard(self.actors, groups, lambda idx: self._reserve_group([cmds[i] for i in idx]), out,
                              across, decided, None if asked is None else lambda: asked(out))
        across_ids = set(spanning)  # reserve() counts these; the rest decided here, or refused by their claims
        count_reservations(self.metrics, [result for i, result in enumerate(out) if i not in across_ids])
        return out

    async def gather_by_shard(
        self, groups: dict[int, list[int]], work_for: Callable[[list[int]], Callable[[Ledger, int], list[Any]]],
        out: list[Any], more: Sequence[tuple[list[int], Awaitable[list[Any]]]] = (),
        settled: Callable[[list[int], list[Any] | None], None] | None = None,
    ) -> None:
        """``fanout.gather_by_shard`` over this engine's shards."""
        await gather_by_shard(self.actors, groups, work_for, out, more, settled)

    def _reserve_group(self, cmds: list[ReserveCommand]) -> Callable[[Ledger, int], list[Any]]:
        """Single-shard reservations as one actor message; each succeeds or fails on its own."""

        def run(ledger: Ledger, now: int) -> list[Any]:
            out: list[Any] = []
            for cmd in cmds:
                try:
                    out.append(self._reserve_checked(ledger, ledger, cmd, now))
                except DomainError as exc:
                    out.append(exc)
            return out

        return run

    def reserve_part(self, ledger: Ledger, cmd: ReserveCommand, now: int, opened: int = 0) -> Reservation:
        """A part of an order spanning groups, on its group's shard (``Orders``): over a part of that id resolved so
        long before its order opened (``opened``, by its home's clock; 0: opened just now, judged by ``now``) that
        its order's home may have forgotten the order it was part of (an earlier order's, not evicted yet here:
        ``_order_anew.forgotten``, ``forgotten_now``), reserved anew (R5)."""
        found = ledger.reservation(cmd.reservation_id)
        anew = forgotten(found, opened, self.limits) if opened else forgotten_now(found, now, self.limits)
        return self._reserve_checked(ledger, ledger, cmd, now, anew)[0]

    def _reserve_checked(self, home: Ledger, view: ReserveView, cmd: ReserveCommand, now: int, anew: bool = False
                         ) -> tuple[Reservation, bool]:
        if view is not home:  # across shards, in the coordinator's turn: on each shard it paused
            expire_spanned(view, now, self.place)
        elif home.expiry_due(now):  # R2, R3: as ``_reserve_alone``
            expire_alone(home, now, self.place)
        if anew:
            view = Anew(view, cmd.reservation_id)
        full = record_refusal(home, self.limits)
        if full is not None and view.reservation(cmd.reservation_id) is None:  # a replay is answered (R5)
            self.count_capacity_refusal(full)
            raise full
        return ops.reserve(view, cmd, now, self.group_policies.get(cmd.channel, self.default_group_policy))

    def _reserve_alone(self, cmd: ReserveCommand, ledger: Ledger, now: int) -> tuple[Reservation, bool]:
        """``_reserve_checked`` on one shard (its ledger home and view), bounds asked without ``record_refusal``."""
        limits, live = self.limits, ledger.live_reservations
        if live >= limits.max_live_reservations_per_shard or \
                len(ledger.reservations) - live >= limits.max_resolved_reservations_per_shard:
            return self._reserve_checked(ledger, ledger, cmd, now)
        if ledger.expiry_due(now):  # R2, R3: a hold past its TTL holds nothing when this is decided
            expire_alone(ledger, now, self.place)
        groups = self.group_policies.get(cmd.channel, self.default_group_policy)
        rec = ledger.reserve_new(cmd, now, groups)  # ``ops.reserve`` on a ledger, without its frame
        return (rec, False) if rec is not None else ops.reserve_otherwise(ledger, cmd, now, groups)

    def _tally(self, rec: Reservation, replayed: bool) -> CounterChild:
        """``atp_reservations_total``'s child of a unary Reserve's outcome, kept by state (0: replayed):
        ``count_reservations`` of one decision without its tally. Counted ``value += 1``: ``inc()``
        without its frame (a count of one is never negative, ``inc``'s one check)."""
        counter = self._tallies[0 if replayed else rec.state] = self.metrics.reservations_of(
            "replayed" if replayed else STATE_NAMES[rec.state])
        return counter

    def _count(self, result: tuple[Reservation, bool]) -> None:
        """``count_reservations`` of one decision (an order's Reserve), without its tally (``_tally``)."""
        rec, replayed = result
        (self._tallies.get(0 if replayed else rec.state) or self._tally(rec, replayed)).value += 1

    def _count_late(self, answer: asyncio.Future[tuple[Reservation, bool]] | None) -> None:
        """A Reserve decided whose caller went before its answer (R8: it stands), counted once answered as its caller
        would have been (``_count``, ``count_refused``), as a ReserveStream's item and a Confirm are counted whatever
        their caller does. None (nothing decided: skipped in its turn) or cancelled (a saga not begun): nothing."""
        if answer is None or answer.cancelled():
            return
        if not answer.done():
            answer.add_done_callback(self._count_late)
            return
        error = answer.exception()
        if error is None:
            self._count(answer.result())
        else:
            count_refused(self.metrics, error)

    async def get_reservation(self, reservation_id: str) -> Reservation:
        """The record as durable (R7): answered once every batch its shard has in flight is (none taken back)."""
        home = self._home.get(reservation_id)
        rec: Reservation | None = None
        if home is None and self._log.leased:
            raise self._not_here()
        if home is not None:
            rec = await self.actors[home].submit(lambda ledger, _now: ledger.reservation(reservation_id))
            if rec is not None and rec.is_order and self.orders is not None:  # as its saga shows it (Orders)
                return await self.orders.read(reservation_id, home, as_recorded=True)  # R3: as its home has it
        if rec is None:
            self.routes.forget_if_unheld(reservation_id)
            raise NotFound(f"reservation_id: no reservation {reservation_id!r}")
        return rec

    async def set_safety_stock(self, sku: str, location: str, quantity: int) -> Quantities:
        """Q4, durable like every other change."""
        shard = self.place(sku)

        def work(ledger: Ledger, _now: int) -> Quantities:
            refusal = None if ledger.store.exists(sku, location) else room_refusal(ledger, 1)
            if refusal is not None:  # a new position past max_positions_per_shard
                raise refusal
            ledger.set_safety_stock(sku, location, quantity)
            return ledger.quantities(sku, location)

        try:
            result: Quantities = await self.actors[shard].submit(work)
        except ResourceExhausted as exc:
            self.count_capacity_refusal(exc)
            raise
        return result

    def count_capacity_refusal(self, error: DomainError, n: int = 1) -> None:
        """``atp_capacity_refusals_total{limit}`` for a CAPACITY_REACHED refusal (others are not counted here)."""
        if error.reason == Reason.CAPACITY_REACHED:
            self.metrics.capacity_refusals.labels(error.metadata.get("limit", "")).inc(n)

    def remembers(self, cmd: ReserveCommand) -> bool:
        """Whether ``cmd``'s Reserve is answered by a record decided already (its home holds its id: R5),
        or not here (its home another process's: ``Moved``). A hint: one forgotten meanwhile is decided anew."""
        actor = self.actors[self.routes.placement(cmd)[1]]
        return actor.vacant or actor.ledger.reservation(cmd.reservation_id) is not None

    def home_of(self, reservation_id: str) -> int | None:
        return self._home.get(reservation_id)

    # -- time ---------------------------------------------------------------------------
    async def run_maintenance(self) -> None:
        """One housekeeping pass now (``Housekeeper.run_pass``)."""
        await self._housekeeper.run_pass()

