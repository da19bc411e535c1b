"""A change of a reservation's record (Confirm, Release, Fulfil; a SHIPMENT naming it): run with every shard of its
lines held (R2), again over more shards where its Reserve finished meanwhile on more than were known; an order
spanning groups changed by its saga instead (``Orders``). Part of the ``Engine`` (``router.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any

from atp_service.engine.coordinator import Coordinator, ViewWork
from atp_service.engine.owned import OwnedShards
from atp_service.tasks import keep
from reservation import (
    DomainError,
    LineRequest,
    NotFound,
    OrderStep,
    PendingOp,
    Reason,
    Reservation,
    ReserveView,
    State,
    Unavailable,
)
from reservation import _operations as ops

REROUTES = 3
STOPPED_IN_DOUBT = ("outcome unknown: the service stopped before the change was known to be durable; retry with the "
                    "same ids, which answers what was decided")


class _Reroute(DomainError):
    """Raised before any change: the work must run again over these shards."""

    def __init__(self, shards: set[int]) -> None:
        super().__init__("reroute")
        self.shards = shards


class RecordChanges(OwnedShards):
    """The engine's changes of a record, each on the shards its lines name (``run``)."""

    _home: dict[str, int]
    _coordinator: Coordinator
    _changes: set[asyncio.Task[Any]]  # ``_resolve``'s, each until it ends (a change decided outlives its caller)

    async def confirm(self, reservation_id: str) -> Reservation:
        return await self._resolve(reservation_id, "confirmed", lambda v, now: ops.confirm(v, reservation_id, now),
                                   PendingOp(OrderStep.CONFIRM))

    async def release(self, reservation_id: str, lines: tuple[LineRequest, ...], operation_id: str) -> Reservation:
        step = PendingOp(OrderStep.RELEASE, lines, operation_id)
        return await self._resolve(reservation_id, "released", lambda v, now: ops.release(
            v, reservation_id, lines, operation_id, now, self.limits), step)

    async def fulfill(self, reservation_id: str, lines: tuple[LineRequest, ...], operation_id: str) -> Reservation:
        step = PendingOp(OrderStep.FULFIL, lines, operation_id)
        return await self._resolve(reservation_id, "fulfilled", lambda v, now: ops.fulfill(
            v, reservation_id, lines, operation_id, now, self.limits), step)

    async def _resolve(self, reservation_id: str, outcome: str, work: ViewWork, step: PendingOp) -> Reservation:
        """The change, counted in ``atp_reservations_total`` once durable: ``outcome``, or ``replayed`` where it only
        retried a change made (R5: answered from the record), as a retried Reserve is. Counted by the work's own task
        (a saga's, or one made here) whatever its caller does: a caller gone (R8) left a change made uncounted."""
        home = self._home.get(reservation_id)

        def told(replayed: bool) -> None:
            self.metrics.reservations_of("replayed" if replayed else outcome).inc()

        if self.orders is not None and home is not None and self.is_order(home, reservation_id):
            changed: Reservation = await self.orders.change(reservation_id, home, step, told)  # told by its saga
            return changed
        replays: list[bool] = []  # the work's word, in its turn: whether it found the change made already
        change = keep(self._changes, self.run_on_record(reservation_id, _noting(work, reservation_id, replays)))
        change.add_done_callback(lambda done: None if done.cancelled() or done.exception() is not None  # retrieved
                                 else told(bool(replays) and replays[-1]))  # a refusal: counted by its status
        try:
            result: Reservation = await asyncio.shield(change)  # a change decided goes on without its caller (R8)
        except asyncio.CancelledError:
            if change.cancelled() and not asyncio.current_task().cancelling():  # type: ignore[union-attr]
                if replays:  # decided, its entry not durable when its shard's stop gave up draining it (R7)
                    raise Unavailable(STOPPED_IN_DOUBT, Reason.OUTCOME_UNKNOWN) from None
                raise Unavailable("service is shutting down", Reason.SHUTTING_DOWN) from None  # stopped_changes
            if not replays:  # not decided yet (or refused): given up, nothing of it made (R8: whole or not at all).
                change.cancel()  # Left waiting, each retry left one more task waiting (``pause`` waits for room)
            raise
        return result

    async def run_on_record(self, reservation_id: str, work: ViewWork, also: Iterable[int] = ()) -> Any:
        """``work`` on a reservation's record with every shard of its lines held (and ``also``'s):
        whatever it changes — an expiry on the way releases every line — is on the right shard."""
        home = self._home.get(reservation_id)
        if home is None:
            if self._log.leased:
                raise self._not_here()
            raise NotFound(f"reservation_id: no reservation {reservation_id!r}")
        rec = self.actors[home].ledger.reservation(reservation_id)
        shards = {home, *also} | ({self.place(line.sku) for line in rec.lines} if rec else set())
        for _ in range(REROUTES):
            try:
                return await self.run(shards, home, self._guarded(reservation_id, shards, work))
            except _Reroute as exc:  # its Reserve finished meanwhile, on more shards than we knew
                shards = exc.shards
        raise Unavailable(f"reservation_id: {reservation_id!r} is being changed concurrently; retry",
                          Reason.CONCURRENT_CHANGE)

    def _guarded(self, reservation_id: str, shards: set[int], work: ViewWork) -> ViewWork:
        """Work on a record is decided only where every shard of its lines is held: a record read
        at routing time may not exist yet (its Reserve still in flight) and then span more shards."""

        def run(view: ReserveView, now: int) -> Any:
            rec = view.reservation(reservation_id)
            if rec is not None and rec.is_order:  # opened by its saga since it was routed: never changed here
                raise Unavailable(f"reservation_id: {reservation_id!r} is being decided; retry",
                                  Reason.CONCURRENT_CHANGE)
            if rec is not None:
                needed = shards | {self.place(line.sku) for line in rec.lines}
                if needed != shards:
                    raise _Reroute(needed)
            return work(view, now)

        return run

    def run(self, shards: set[int], home: int, work: ViewWork) -> Awaitable[Any]:
        """``work`` on one shard's actor, or across several by the coordinator: not a coroutine (awaited at once)."""
        if len(shards) == 1:
            return self.actors[home].submit(work)
        return self._coordinator.run(sorted(shards), home, work)


def _noting(work: ViewWork, reservation_id: str, replays: list[bool]) -> ViewWork:
    """``work``, noting in ``replays`` whether it answered with the record as it found it: a retry of a change made
    (R5: ``ops`` returns the stored record itself, nothing saved) rather than the changed copy it saved; or expired
    on the way, the answer of a retry alone."""

    def run(view: ReserveView, now: int) -> Any:
        before = view.reservation(reservation_id)
        answer = work(view, now)
        # EXPIRED: a retry that found its hold past its TTL and expired it on the way (R3), answering that copy; a
        # change of a hold past its TTL not done before is refused, so only a retry answers an expired record.
        replays.append(answer is before or answer.state == State.EXPIRED)
        return answer

    return run


async def stopped_changes(changes: set[asyncio.Task[Any]]) -> None:
    """``_resolve``'s changes ended, once their shards have stopped: a change decided is durable or failed by then
    (its shards' stop settles what is in flight), but where a shard's drain gave up past its bound — its entry still
    on its way, the next start's to settle from the log: cancelled, its caller is answered OUTCOME_UNKNOWN (R7); one
    still waiting for a shard (no room in a stopped shard's mailbox: its stop wakes as many as it refused messages)
    changed nothing and is cancelled (R8), its caller answered UNAVAILABLE SHUTTING_DOWN (``_resolve``); none left
    pending past the engine's stop."""
    for change in list(changes):
        change.cancel()  # a no-op for a change ended
    await asyncio.gather(*changes, return_exceptions=True)

