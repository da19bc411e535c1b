"""The end of a seed: with Redis answering, housekeeping settles every order's saga and gives up every
held part of an order Redis lost (``orphans.LeasedOrphans``); then R2/R3 hold for every order."""

from __future__ import annotations

import asyncio

from atp_service.engine.orphans import (
    CONFIRMED_ASKED_EVERY_MS,
    ORPHAN_AGE_MARGIN_MS,
    given_back,
    gives_up,
    lost_moves,
)
from reservation import State
from reservation import _orders as orders
from tests.sim.checks import Violation, orders_hold_what_they_decided
from tests.sim.cluster import ClusterWorld
from tests.sim.world import World

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
    up (``orphans.gives_up``), or that holds or keeps committed units such an order fulfilled (``orphans.lost_moves``:
    fulfilled there, Redis lost that with their move out of on_hand) or released (``orphans.given_back``;
    a confirmed part of a lost order is kept: its units are a paid order's, committed until shipped)."""
    records = {rid: rec for a in world.eng.actors for rid, rec in a.ledger.reservations.items()}
    return [(rid, actor.shard, rec.created_at) for actor in world.eng.actors
            for rid, rec in actor.ledger.reservations.items()
            if (order_id := orders.order_of(rid)) is not None and (
                (any(line.held for line in rec.lines)
                 and ((order_id in world.lost_orders and order_id not in records)
                      or (_torn(world, order_id) and gives_up(records.get(order_id), rec))))
                or (_torn(world, order_id) and order_id in records and (
                    given_back([records[order_id]], rec) or any(lost_moves([records[order_id]], rec)))))]


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
