"""Orders whose lines span groups where Redis cannot write those groups in one script (a Redis Cluster): a
saga of single-group steps (``reservation._orders``), all or nothing in outcome (R2). Every step is an ordinary
actor message on one shard, durable before the next starts, and every step is idempotent, so a saga can be run
again from wherever it stopped: the order's record at its home says what it has decided (``pending``). One
task per order runs its saga at a time (a lock per order), owned by this object, not by the caller (R8): a caller
that goes away abandons only its wait (and its saga if not begun: ``capacity.Waits``). A saga that cannot finish
now (a group's log unreachable) leaves the order pending; the caller hears ``UNAVAILABLE`` (``OUTCOME_UNKNOWN``),
and the order is driven on by its retry or by housekeeping, as is every order found pending after a restart.
Its steps on the parts and on the order's record at its home: ``order_steps.py``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from atp_service.engine.capacity import DRIVE_ORDERS_AT_ONCE, Waits, next_to_drive, order_opened
from atp_service.engine.confirmed import ConfirmedChecks, checked
from atp_service.engine.losses import (
    NOWHERE_REMEMBERED,
    REMADE,
    Nowhere,
    Told,
    as_shown,
    commit_lost,
    commit_refused,
    log_confirmed_again,
    log_decided_again,
    own_of,
    planned,
    shares_to,
)
from atp_service.engine.order_expiry import (
    answering_parts,
    expire_order,
    read_order,
    refused_as_recorded,
    undecided_parts,
)
from atp_service.engine.order_steps import OrderSteps
from atp_service.engine.part_orphans import held_orphans, log_orphaned
from atp_service.engine.parts import (
    UNDECIDED,
    GiveUpPart,
    lasting,
    on_shard,
    record_at,
    reserve_steps,
    run_parts,
    shipped_elsewhere,
)
from atp_service.engine.shipments import ASK_EVERY, Asking, fulfilling, fulfilling_its, refused_for_good, unfulfilled
from atp_service.tasks import cancel_for_good, exception_seen, keep
from reservation import (
    DomainError,
    Fact,
    FactOutcome,
    FailedPrecondition,
    Ledger,
    NotFound,
    OrderStep,
    PendingOp,
    Reason,
    Reservation,
    ReserveCommand,
    ResourceExhausted,
    State,
    Unavailable,
)
from reservation import _order_losses as losses
from reservation import _orders as orders

if TYPE_CHECKING:
    from atp_service.engine.router import Engine

T = TypeVar("T")


class Orders(OrderSteps):
    """The sagas of ``engine``'s orders that span groups."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # order id -> (its lock, tasks using it)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.waits = Waits()  # the sagas callers wait for: dropped with a caller gone before they began (R8)
        self.unsettled: set[str] = set()  # orders left pending (a saga stopped, found so at start): driven on
        self.orphans: dict[str, int] = {}  # held parts whose order has no record (-> group): given up
        self._drives: set[asyncio.Task[Any]] = set()  # housekeeping's sagas of those, running
        self._driven: set[str] = set()  # their orders: half-way until the saga ends (a peer's step waits 5 s)
        engine.metrics.orders_unsettled.follow(lambda: self._homed_here(self.unsettled | self._driven))  # at scrapes
        self._after = ""  # the last order housekeeping drove on: the next pass goes on after it
        self.nowhere = Nowhere(NOWHERE_REMEMBERED)  # orders committed nowhere now (each counted once)
        engine.metrics.orders_committed_nowhere.follow(lambda: self._homed_here(self.nowhere))
        self.said = Told(NOWHERE_REMEMBERED)  # lines said as their step is sent: once, not at each retry of it
        self.confirmed = ConfirmedChecks(self._check_confirmed, lambda order_id: order_id in self._locks)
        """Leased: the confirmed orders of a group taken, checked once for parts all resolved."""

    def find_pending(self, ledgers: Iterable[Ledger]) -> None:
        """After a restart: orders whose saga stopped half-way are driven on, orphaned parts given up."""
        ledgers = list(ledgers)
        for ledger in ledgers:
            self.unsettled.update(rid for rid, rec in ledger.reservations.items()
                                  if rec.is_order and rec.pending is not None)
        # Every group here: an order not found here is nowhere (leased: housekeeping asks every group, orphans.py).
        if self._engine.remote is None:
            # All shipped, stopped before resolving it; or missing a part Redis lost, committed nowhere (Q3).
            self.unsettled.update(losses.found_at_start(ledgers, self._engine.now_at, self._engine.limits,
                                                        self._engine.place))
            self.orphans.update(held_orphans(ledgers, lambda order_id: self._engine.home_of(order_id) is not None))
        else:  # its parts are at other groups: read there, a few orders at a time (``confirmed.py``)
            for ledger in ledgers:
                self.confirmed.taken(ledger)

    # -- what the engine calls ---------------------------------------------------------
    def reserve(self, cmd: ReserveCommand, home: int) -> asyncio.Task[tuple[Reservation, bool]]:
        """The order's Reserve saga, started: its task (the engine keeps the order's route until
        the task is done, whoever waits for it: ``waits.wait``)."""
        return self.waits.add(self._spawn(self._locked(cmd.reservation_id, lambda: self._reserve(cmd, home))))

    async def change(self, order_id: str, home: int, step: PendingOp,
                     told: Callable[[bool], None] | None = None) -> Reservation:
        """``told(replayed)`` by the saga's task once the change is made, whatever its caller does: ``replayed``
        where it only retried a change made (R5: nothing to do)."""
        return await self._owned(order_id, lambda: self._change(order_id, home, step, told=told))

    async def read(self, order_id: str, home: int, as_recorded: bool = False) -> Reservation:
        return await self._owned(order_id, lambda: read_order(self, order_id, home, as_recorded))  # R3: its home's

    async def expire(self, order_id: str, home: int) -> None:
        await self._owned(order_id, lambda: expire_order(self, order_id, home))  # a part silent too (R2, R3)

    async def shipment(self, fact: Fact, order_id: str, asking: Asking = ASK_EVERY) -> tuple[FactOutcome, str]:
        """A SHIPMENT fact naming the order: the stock moves and the part holding that position is fulfilled with
        it, in one step on the fact's shard (R4, E8) — after a change the order has pending is carried through and a
        confirmed part Redis lost made again (refused for good: the stock moves alone, Q1), and before the order is
        resolved once every part is. ``asking``: whom, where homed at another process."""
        return await self._owned(order_id, lambda: self._shipment(fact, order_id, asking))

    def has_part(self, shard: int, order_id: str) -> bool:  # a routing hint, read between batches
        return self._engine.actors[shard].ledger.reservation(orders.part_id(order_id, shard)) is not None

    def _homed_here(self, order_ids: Iterable[str]) -> int:
        """Of ``order_ids``, those whose home group this process serves now: ``atp_orders_unsettled`` (orders half-way),
        ``atp_orders_committed_nowhere``. One homed in a group handed over stays in ``unsettled`` until housekeeping's
        next look (a pass, or several) and its next owner counts it from its recovery (one committed nowhere, from its
        check of the group's confirmed orders): counted here too, the sum over the processes said it twice."""
        actors, home_of = self._engine.actors, self._engine.home_of
        return sum(1 for rid in order_ids if (home := home_of(rid)) is not None and not actors[home].vacant)

    def drive_unsettled(self) -> None:
        """Drive on orders left pending whose saga is not running now, and give up orphaned parts, at
        most ``DRIVE_ORDERS_AT_ONCE`` sagas of them running at once (the rest at the next passes). Both
        go round together: orphans given the room first, always the same ones, took every slot while
        their group's log was unreachable, and no pending order (nor later orphan) was driven on."""
        idle = self.unsettled.difference(self._locks)  # part ids (PART_MARK) never name an order
        idle.update(part for part in self.orphans if orders.order_of(part) not in self._locks)
        self._after, ids = next_to_drive(idle, self._after, DRIVE_ORDERS_AT_ONCE - len(self._drives))
        for rid in ids:
            order_id = orders.order_of(rid)
            if order_id is not None:  # kept in ``orphans`` until given up: tried again
                self._drive(order_id, functools.partial(self._give_up_orphan, rid, self.orphans[rid]))
                continue
            home = self._engine.home_of(rid)
            self.unsettled.discard(rid)
            if home is not None:
                self._driven.add(rid)  # unsettled again, before its saga ends, if it stopped half-way
                self._drive(rid, functools.partial(self._settled, rid, home))
        if self._engine.remote is not None:
            self.confirmed.run_pass(self._engine.actors)
            self.nowhere.keep(lambda rid: self._homed_here((rid,)) == 1)  # handed over: found anew if taken again

    def _drive(self, order_id: str, saga: Callable[[], Awaitable[Any]]) -> None:
        self._drives.add(task := self._spawn(self._locked(order_id, saga)))
        task.add_done_callback(self._drives.discard)
        task.add_done_callback(lambda _: self._driven.discard(order_id))

    def run_locked(self, order_id: str, saga: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        return self._locked(order_id, saga)  # for ``orphans.LeasedOrphans``: no saga of the order meanwhile

    def _count(self, outcome: str) -> None:
        self._engine.metrics.order_sagas.labels(outcome).inc()

    def stop(self) -> None:
        for task in list(self._tasks):
            cancel_for_good(task)  # a saga inside a redis-py or gRPC call can lose one cancellation

    # -- one task per order at a time ------------------------------------------------------
    async def _owned(self, order_id: str, saga: Callable[[], Awaitable[T]]) -> T:
        return await self.waits.wait(self.waits.add(self._spawn(self._locked(order_id, saga))))

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = keep(self._tasks, coro)
        task.add_done_callback(exception_seen)  # its caller may have gone
        return task

    async def _locked(self, order_id: str, saga: Callable[[], Awaitable[T]], counted: bool = True) -> T:
        lock, users = self._locks.get(order_id, (asyncio.Lock(), 0))
        self._locks[order_id] = (lock, users + 1)
        try:
            async with lock:
                self.waits.begun()
                try:
                    result = await saga()
                except BaseException as exc:
                    if not isinstance(exc, DomainError) or isinstance(exc, Unavailable):  # shed: first step only
                        self.unsettled.add(order_id)  # it may have stopped half-way: housekeeping drives it on
                        self._count("stopped")
                    else:
                        self._count("refused")
                    raise
                if counted:
                    self._count("done")
                return result
        finally:
            lock, users = self._locks[order_id]
            if users == 1:
                del self._locks[order_id]
            else:
                self._locks[order_id] = (lock, users - 1)

    # -- the sagas ---------------------------------------------------------------------------
    async def _reserve(self, cmd: ReserveCommand, home: int) -> tuple[Reservation, bool]:
        groups = tuple(sorted({self._engine.place(line.sku) for line in cmd.lines}))
        limits, place = self._engine.limits, self._engine.place
        order, fresh = await on_shard(self._engine, home, lambda ledger, now: order_opened(
            ledger, cmd, groups, limits, now, place), refused_as_is=True)
        if isinstance(order, ResourceExhausted):  # nothing written: refused as a one-group Reserve is
            self._engine.count_capacity_refusal(order)
            raise order
        if not order.is_order:
            return order, True  # R5: an ordinary reservation of that id (its content checked above)
        if order.pending is None or order.pending.kind != OrderStep.RESERVE or \
                self._engine.now_at(home) >= order.expires_at:
            # Decided (R5: a refusal recorded replayed), a change left half-applied carried through, never
            # decided again; or left undecided past its TTL: it expires (``_settle``), nothing reserved now.
            order, parts = await self._settled(cmd.reservation_id, home)
            return orders.replayed(order, *own_of(self._engine, order, parts)), True  # not another order's part
        decided = await self._decide(order, home, fresh)  # R5: as it stands
        if decided.state == State.CONFIRMED:  # decided again: answered as a read answers it — its own lines, a part
            return await read_order(self, cmd.reservation_id, home, False), True  # lost since made again (Q3, R4)
        return as_shown(self._engine, decided, await self._parts(decided, True)), False

    async def _decide(self, order: Reservation, home: int, fresh: bool = False) -> Reservation:
        """Reserve every part (a replay where it exists; ``fresh``: opened by this saga), release the held ones if any
        part is refused, then record the order's decision; the order as recorded. A part confirmed proves it decided
        and confirmed before its home lost that (R7): decided again CONFIRMED, carried through, never refused (R3)."""
        cmds, now = orders.split(orders.command_of(order), place := self._engine.place), self._engine.now_at
        limits, answered = self._engine.limits, True  # the parts as the steps answered them: each judged there (R5)
        try:
            parts = await run_parts(self._engine, reserve_steps(order, cmds, fresh))
        except DomainError as exc:
            if isinstance(exc, Unavailable):
                raise
            parts, answered = await self._parts(order, missing_ok=True), False  # refused by a rule (a part's id
            if not losses.decided_by_parts(order, parts, place, limits):  # taken by other content, its group full):
                expired = await self._abandon(order, home, exc)  # given up, unless a part of it confirmed
                await self._save(home, orders.settled(expired, now(home)), over=expired)
                raise orders.refused_again(expired.ops[orders.REFUSED]) from None  # told as a retry is (R5)
        parts = await commit_refused(self._engine, order, parts, now(home), answered)  # Q3: a lost part refused,
        decided, release = losses.decide(order, parts, now(home), place, limits, answered)  # committed
        if release:  # an expiry's share: only a part still HELD (one confirmed meanwhile kept, Q3)
            await self._apply(order, dict.fromkeys(release, PendingOp(OrderStep.EXPIRE)))
            decided, _ = losses.decide(order, await self._parts(order), now(home), place, limits, answered)
        assert decided is not None
        log_decided_again(decided, home)  # where it was decided again (``_order_losses.decided_again``)
        await self._save(home, decided, over=order)
        return decided if decided.pending is None else await self._settle(order.reservation_id, home)

    async def _change(self, order_id: str, home: int, step: PendingOp, quiet: bool = False,
                      told: Callable[[bool], None] | None = None) -> Reservation:
        try:
            order, parts = await self._settled(order_id, home)
        except Unavailable as exc:  # a part silent: an order its home resolved is refused as recorded there (R3)
            raise await refused_as_recorded(self._engine, order_id, home, step, exc) from None
        if (step.kind == OrderStep.CONFIRM or step.lines) and order.state == State.HELD and order.pending is None:
            lost = await self._give_up_if_torn(order, home, parts)
            if lost:
                raise FailedPrecondition("EXPIRED", f"its hold in shard groups {lost} is gone (Redis lost acknowledged "
                                         "entries there): it was given up whole; reserve again", order_id)
        place, limits = self._engine.place, self._engine.limits
        done, shares, error = planned(self._engine, order, parts, step, self._engine.now_at(home))  # as shown
        if done is not None:
            await self._save(home, done, over=order)  # decided: from here on it is carried through
            await self._apply(done, shares_to(self._engine, order, shares, parts, self.said))  # as read: before it
            parts = await self._parts(done)
            order = orders.settled(done, self._engine.now_at(home), losses.own_parts(done, parts, place, limits))
            await self._save(home, order, over=done)
        if error is not None and not quiet:
            raise error
        if not losses.lost_committed(order, parts, self._engine.now_at(home), limits, place):
            self.nowhere.gone(order_id)  # resolved, or its lines there released: no unit of it committed nowhere
        if told is not None:  # a retry plans nothing, or only the expiry it found due (R3: a change not done before
            told(done is None or done.pending == PendingOp(OrderStep.EXPIRE))  # is refused once its TTL passed)
        return as_shown(self._engine, order, parts)

    async def _settled(self, order_id: str, home: int) -> tuple[Reservation, dict[int, Reservation]]:
        """The order with its pending change carried through (``_settle``), and its parts; its record resolved where
        every part is, by SHIPMENT facts (R5), by whichever path drives it on (else CONFIRMED and live for good)."""
        order, place = await self._settle(order_id, home), self._engine.place
        parts = await self._parts(order)
        # R3, Q3: its home lost its confirmation (R7): never expired
        if losses.confirmed_by_parts(order, parts, place, self._engine.limits):
            log_confirmed_again(order_id, home)
            await self._save(home, losses.confirmed_again(order, self._engine.now_at(home)), over=order)
            return await self._settled(order_id, home)  # carried through to every part (``_settle``)
        if lost := losses.lost_committed(order, parts, now := self._engine.now_at(home), self._engine.limits, place):
            parts |= await commit_lost(self._engine, order, lost, now, parts, self.nowhere, self.said)  # Q3, R4
        else:
            self.said.forget((REMADE, order_id))  # found whole: a later loss of its parts is a loss of its own, said
            self.nowhere.gone(order_id)  # its parts all its own (or resolved): committed where its record says
        shown = as_shown(self._engine, order, parts)
        if order.state in (State.HELD, State.CONFIRMED) and shown.state in (State.FULFILLED, State.RELEASED):
            # A held order's parts are resolved by no SHIPMENT fact: nothing outstanding there means Redis
            # lost them; given up whole (EXPIRED, logged) as a Confirm does it, not recorded RELEASED (R3).
            if order.state == State.HELD and await self._give_up_if_torn(order, home, parts):
                return await self._settled(order_id, home)
            await self._save(home, resolved := orders.resolved(order, shown, self._engine.now_at(home)), over=order)
            order = resolved
        return order, parts

    async def _settle(self, order_id: str, home: int) -> Reservation:
        """The order with whatever it had pending carried through (a reserve decided, a change applied)."""
        order = await record_at(self._engine, home, order_id)
        if order is None or not order.is_order:
            raise NotFound(f"reservation_id: no reservation {order_id!r}")
        pending, parts, place = order.pending, None, self._engine.place
        if pending is None:
            return order
        if pending.kind == OrderStep.RESERVE:  # past its TTL, given up undecided — unless a part of it was confirmed
            if self._engine.now_at(home) < order.expires_at or losses.decided_by_parts(order, await undecided_parts(
                    self, order, home), place, self._engine.limits):  # R3, Q3: decided, confirmed, lost at its home
                return await self._decide(order, home)
            order = await self._abandon(order, home)  # never decided within its TTL: nothing stays held
        elif pending.kind == OrderStep.EXPIRE and not any(line.granted for line in order.lines):
            await self._give_up_parts(order)  # abandoned, and stopped before its parts were given up
        elif pending.kind == OrderStep.CONFIRM and await self._give_up_if_torn(order, home, parts := await self._parts(
                order)):
            return await self._settle(order_id, home)  # given up whole: expired
        else:  # only to a part read, none to another order's of that id but to expire it (``shares_for``)
            found, silent = (parts, []) if parts is not None else await answering_parts(self._engine, order)
            shares = orders.shares(order, pending, place)
            await self._apply(order, shares_to(self._engine, order, shares, found, self.said))
            if silent:  # R3, Q3: its share once its group answers a read, the change left pending (driven on)
                raise Unavailable(UNDECIDED, Reason.OUTCOME_UNKNOWN)
            # recorded as they did it (``_change``)
            parts = losses.own_parts(order, await self._parts(order), place, self._engine.limits)
        settled = orders.settled(order, self._engine.now_at(home), parts)
        await self._save(home, settled, over=order)
        return settled

    async def _give_up_orphan(self, part_id: str, group: int) -> None:
        """An orphaned part released, unless a retry of its Reserve opened the order again meanwhile."""
        order_id = orders.order_of(part_id)
        part = await record_at(self._engine, group, part_id)
        if order_id is None or self._engine.home_of(order_id) is not None or part is None or part.state != State.HELD:
            self.orphans.pop(part_id, None)
            return
        log_orphaned(part_id, group, "holds units: released")
        await run_parts(self._engine, {group: GiveUpPart(orders.command_of(part))})
        self.orphans.pop(part_id, None)

    async def _shipment(self, fact: Fact, order_id: str, asking: Asking) -> tuple[FactOutcome, str]:
        home, shard, limits = self._engine.home_of(order_id), self._engine.place(fact.sku), self._engine.limits
        ship = fulfilling(fact, orders.part_id(order_id, shard), limits)
        if home is None and self._engine.remote is not None:  # homed at another process: settled there first
            return await shipped_elsewhere(self._engine, fact, lambda order: on_shard(  # whose part: as told there
                self._engine, shard, fulfilling_its(fact, order, shard, self._engine.place, limits)), asking)
        if home is not None:  # a change left pending (a confirmation) carried through first, and a part Redis lost
            try:  # made again (``_settled``, as a home elsewhere does for ``SettleOrder``): the fact fulfils it
                ship = fulfilling_its(fact, (await self._settled(order_id, home))[0], shard, self._engine.place, limits)
            except NotFound:
                home = None  # forgotten meanwhile: the stock moves all the same (no part here: unknown, R4)
            except DomainError as exc:  # refused for good (the order given up deciding it): the units left all
                if not lasting(exc):  # the same (Q1, R4); a refusal that passes is taken again later, nothing applied
                    raise
                ship, home = unfulfilled(fact, refused_for_good(order_id, exc)), None
        result: tuple[FactOutcome, str] = await on_shard(self._engine, shard, ship)
        if home is not None:
            await self._resolve_if_done(order_id, home)
        return result

    async def resolve_if_done(self, order_id: str, home: int) -> None:
        """``_resolve_if_done`` under the order's lock (a shipment fulfilled a part at another process)."""
        await self._owned(order_id, lambda: self._resolve_if_done(order_id, home))

    def _check_confirmed(self, order_id: str, home: int) -> asyncio.Task[bool]:
        check = functools.partial(checked, functools.partial(self._resolve_if_done, order_id, home),
                                  lambda: self._engine.actors[home].ledger.reservation(order_id))
        return self._spawn(self._locked(order_id, check, counted=False))

    async def _resolve_if_done(self, order_id: str, home: int) -> None:
        """Every part resolved by SHIPMENT facts: the order's own record is resolved as well (a change pending carried
        through first, ``_settled``), so it stops counting as live and is forgotten after its retention."""
        try:
            await self._settled(order_id, home)
        except NotFound:  # forgotten meanwhile, or not an order
            return
