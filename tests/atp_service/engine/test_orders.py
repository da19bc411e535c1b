"""The sagas of orders spanning shards (engine/orders.py) on the simulated cluster log, where a
test can stop a saga half-way exactly where it wants: what a retry, a read or housekeeping then
does with the order it finds."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import msgspec
import pytest

from reservation import Fact, FactKind, OrderStep, PendingOp, Reservation, ReserveCommand, State, reserve_command
from reservation import _orders as orders
from tests.sim.world import START_MS, World

T = TypeVar("T")


@pytest.fixture
async def world() -> AsyncIterator[World]:
    world = World(cluster=True, channels=False)
    await world.boot()
    await settled(world, world.fact_desk.record([Fact(f"s-{sku}", "wms", FactKind.RECEIPT, sku, "L1", 10, START_MS)
                                                 for sku in ("A", "B", "J")], "test"))
    yield world
    await world.eng.stop(snapshot=False)


async def settled(world: World, call: Awaitable[T]) -> T:
    """``call``, with the simulated Redis answering every write until it is done."""
    task = asyncio.ensure_future(call)
    await world.quiesce()
    return await task


def order_cmd(world: World) -> ReserveCommand:
    cmd = reserve_command(reservation_id="o", order_ref="x", channel="web", lines=[("A", "L1", 2), ("J", "L1", 1)],
                          ttl_seconds=30, allow_partial=False, limits=world.config.limits)  # the sim's longest
    assert len({world.eng.place(line.sku) for line in cmd.lines}) == 2, "the lines span shards"
    return cmd


def record(world: World, rid: str) -> Reservation:
    found = [a.ledger.reservations[rid] for a in world.eng.actors if rid in a.ledger.reservations]
    assert len(found) == 1
    return found[0]


async def stop_half_way(world: World, order: Reservation, step: PendingOp, state: State) -> None:
    """The order as a saga leaves it after its first step: the change recorded, no part told."""
    home = world.eng.home_of(order.reservation_id)
    assert home is not None
    pending = msgspec.structs.replace(order, state=state, pending=step)
    await settled(world, world.eng.actors[home].submit(lambda ledger, _now: ledger.save(pending)))


async def test_a_retried_reserve_carries_a_pending_confirmation_through_and_never_decides_again(
        world: World) -> None:
    cmd = order_cmd(world)
    held, _ = await settled(world, world.eng.reserve(cmd))
    assert held.state == State.HELD
    await stop_half_way(world, record(world, "o"), PendingOp(OrderStep.CONFIRM), State.CONFIRMED)
    again, replayed = await settled(world, world.eng.reserve(cmd))
    assert replayed and again.state == State.CONFIRMED
    assert record(world, "o").pending is None
    for group in record(world, "o").parts:
        assert record(world, orders.part_id("o", group)).state == State.CONFIRMED  # every part confirmed


async def test_housekeeping_never_expires_an_order_whose_confirmation_is_pending_R3(world: World) -> None:
    await settled(world, world.eng.reserve(order_cmd(world)))
    await stop_half_way(world, record(world, "o"), PendingOp(OrderStep.CONFIRM), State.CONFIRMED)
    await world.crash_and_recover(random.Random(0))  # the restart finds the order pending
    world.clock.advance(31_000)  # past its TTL
    await settled(world, world.eng.run_maintenance())
    await settled(world, world.eng.run_maintenance())
    assert record(world, "o").state == State.CONFIRMED and record(world, "o").pending is None
    quantities = [world.eng.availability([(sku, "L1")])[0] for sku in ("A", "J")]
    assert [(q.reserved, q.committed) for q in quantities] == [(0, 2), (0, 1)]


async def test_a_read_of_an_order_left_undecided_decides_it(world: World) -> None:
    cmd = order_cmd(world)
    home = min(world.eng.place(line.sku) for line in cmd.lines)
    opened = orders.open_order(cmd, tuple(sorted({world.eng.place(line.sku) for line in cmd.lines})),
                               world.clock.now_ms())
    await settled(world, world.eng.actors[home].submit(lambda ledger, _now: ledger.save(opened)))
    world.eng._home["o"] = home  # as the Reserve's route had it, before the crash of its saga
    shown = await settled(world, world.eng.get_reservation("o"))
    assert shown.state == State.HELD and [line.held for line in shown.lines] == [2, 1]


def lose_record(world: World, rid: str) -> None:
    """The order's record gone from its home, as after Redis came back from data older than it."""
    home = world.eng.home_of(rid)
    assert home is not None
    del world.eng.actors[home].ledger.reservations[rid]
    world.eng._home.pop(rid)


async def test_a_held_part_whose_order_was_lost_is_released_and_a_confirmed_one_is_kept_for_its_shipment(
        world: World) -> None:
    """A start finds parts whose order has no record (Redis lost it): a held one would hold its units
    for good (parts never expire by themselves) and is released; a confirmed one holds a paid order's
    committed units (Q3), which its SHIPMENT still fulfils, and is kept."""
    held_cmd = msgspec.structs.replace(order_cmd(world), reservation_id="held")
    await settled(world, world.eng.reserve(held_cmd))
    await settled(world, world.eng.reserve(order_cmd(world)))
    await settled(world, world.eng.confirm("o"))
    lose_record(world, "held")
    lose_record(world, "o")
    orders_ = world.eng.orders
    assert orders_ is not None
    orders_.find_pending(actor.ledger for actor in world.eng.actors)
    orders_.drive_unsettled()
    await world.quiesce()
    groups = sorted({world.eng.place(line.sku) for line in held_cmd.lines})
    assert [record(world, orders.part_id("held", g)).state for g in groups] == [State.RELEASED] * 2
    assert [record(world, orders.part_id("o", g)).state for g in groups] == [State.CONFIRMED] * 2
    quantities = [world.eng.availability([(sku, "L1")])[0] for sku in ("A", "J")]
    assert [(q.reserved, q.committed) for q in quantities] == [(0, 2), (0, 1)]
    assert not orders_.orphans
