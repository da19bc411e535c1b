"""The steps of an order's saga (``orders.Orders``) on its parts and on its record at its home: its parts read
and given their shares of a change, its record saved over the one the saga read, and an order given up whole (its
parts released, or a tombstone where one is missing: R2, R3, Q3). Each step is idempotent (``parts``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from atp_service.engine.losses import Told, log_kept_committed, log_stale, torn
from atp_service.engine.parts import ApplyShare, GiveUpPart, ReadPart, ReleaseAsRead, on_shard, run_parts
from reservation import DomainError, Ledger, OrderStep, PendingOp, Reason, Reservation, State, Unavailable
from reservation import _order_losses as losses
from reservation import _orders as orders

if TYPE_CHECKING:
    from atp_service.engine.router import Engine


def share_step(part: str, share: PendingOp) -> ApplyShare:
    """The step applying ``share`` to ``part``: a ``ReleaseAsRead`` where it releases only as read."""
    return (ReleaseAsRead if share.operation_id.startswith(orders.AS_READ) else ApplyShare)(part, share)


class OrderSteps:
    """The steps ``Orders``' sagas take: read, applied and saved, or given up."""

    _engine: Engine
    said: Told

    async def _apply(self, order: Reservation, shares: dict[int, PendingOp]) -> None:
        rid = order.reservation_id
        await run_parts(self._engine, {g: share_step(orders.part_id(rid, g), share) for g, share in shares.items()})

    async def _parts(self, order: Reservation, missing_ok: bool = False) -> dict[int, Reservation]:
        rid = order.reservation_id
        found = await run_parts(self._engine, {g: ReadPart(orders.part_id(rid, g)) for g in order.parts})
        missing = [g for g, p in found.items() if p is None]
        # A decided order's part is missing only once resolved and forgotten after its retention (``Ledger.evict``),
        # its order living on: ``view`` shows the order's record of its lines. Missing undecided: never reserved.
        decided = order.pending is None or order.pending.kind != OrderStep.RESERVE
        if missing and not missing_ok and not decided:
            raise Unavailable(f"reservation_id: {order.reservation_id!r} is missing its parts in groups {missing}",
                              Reason.OUTCOME_UNKNOWN)
        return {g: p for g, p in found.items() if p is not None}

    async def _save(self, home: int, order: Reservation, *, over: Reservation) -> None:
        """Record ``order`` at its home, only over the record this saga read (``over``): a record
        changed meanwhile — by this order's saga at another process that owned the home between —
        stops this saga instead of being overwritten (it is driven on from the current record)."""
        def save(ledger: Ledger, _now: int) -> None:
            if ledger.reservation(order.reservation_id) != over:
                raise Unavailable(f"reservation_id: {order.reservation_id!r} changed while it was decided; retry",
                                  Reason.CONCURRENT_CHANGE)
            ledger.save(order)

        await on_shard(self._engine, home, save)

    async def _abandon(self, order: Reservation, home: int, refusal: DomainError | None = None) -> Reservation:
        """An order undecided past its TTL, or ``refusal`` by a part: its parts that exist are released; it expires."""
        expired = losses.abandoned(order, self._engine.now_at(home), refusal)
        await self._save(home, expired, over=order)  # first: a home taken by another releases nothing
        await self._give_up_parts(expired)  # as a stop after the save leaves it to be driven on (``_settle``)
        return expired

    async def _give_up_if_torn(self, order: Reservation, home: int, parts: dict[int, Reservation]) -> list[int]:
        """A held order whose part Redis lost (``lost_parts``) cannot be confirmed whole: confirmed, the rest would be
        CONFIRMED with those units committed nowhere, sold again (R2, Q3). Given up whole (``_abandon``: parts that
        exist released, a tombstone where missing); the groups lost (none: the order is whole, or its confirmation was
        restored from a confirmed part, ``_order_losses.restored``: carried through, its committed units kept, Q3)."""
        lost = torn(order, parts, self._engine.now_at(home), self._engine.limits, self._engine.place)  # said
        if lost:
            expired = await self._abandon(order, home)
            await self._save(home, orders.settled(expired, self._engine.now_at(home)), over=expired)
        return lost

    async def _give_up_parts(self, order: Reservation) -> None:
        """Every part of an abandoned order released, or a tombstone in its place (``give_up_part``); a confirmed one
        of its own kept, unless the order was given up once decided (``releases_confirmed``: released too, Q3, as is
        another order's ``stale`` confirmed part: committed for no order)."""
        cmds = orders.split(orders.command_of(order), self._engine.place)
        given = await run_parts(self._engine, {g: GiveUpPart(cmd) for g, cmd in cmds.items()})
        # Another order's confirmed part of that id is not this one's to release, nor to say — but a stale one.
        confirmed = sorted(g for g, part in given.items()
                           if part.state == State.CONFIRMED and losses.own_part(part, cmds[g]))
        limits = self._engine.limits
        stale = sorted(g for g, part in given.items() if g not in confirmed and losses.stale(order, part, limits))
        if (confirmed or stale) and losses.releases_confirmed(order):  # again, after a stop, from the record (R8)
            release = {g: PendingOp(OrderStep.RELEASE) for g in confirmed} | {
                g: losses.release_as_read(given[g]) for g in stale}  # that part, never one made over it since
            log_stale(self.said, order.reservation_id, stale)
            await run_parts(self._engine, {g: share_step(given[g].reservation_id, op) for g, op in release.items()})
        elif confirmed:
            log_kept_committed(order.reservation_id, confirmed)  # else seen nowhere: an EXPIRED order's units committed
