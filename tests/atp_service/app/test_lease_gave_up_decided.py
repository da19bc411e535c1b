"""R2, R3, Q3 under leases (``ownership = leases``): an order given up whole once decided (``_order_losses.abandoned``,
``GAVE_UP_DECIDED``) — a part Redis lost while its Confirm was recorded pending at its home — whose own part another
saga of the same order confirmed after the giving-up saga read the parts. Two sagas of one order run at once only
across a hand-over of its home: the previous home owner's saga goes on with the shares of the Confirm it recorded
while the new owner drives the pending Confirm on. On real services and a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.app import membership as membership_module
from reservation import OrderStep, State
from reservation import _order_losses as losses
from reservation import _orders as orders
from tests.atp_service.app.test_lease_part_outlived import _group_restored, _group_saved
from tests.atp_service.app.test_processes import SHARDS, group_of, owned, processes, routed
from tests.atp_service.app.test_processes_order_steps import stocked
from tests.conftest import ServiceFactory, services_on
from tests.waiting import until


@pytest.fixture
async def start_process(redis_url: str) -> AsyncIterator[ServiceFactory]:
    """As ``test_processes_part_lost``: each process checks its logs' ends every 50 ms (a group Redis took back is
    found short, given up and taken again at the next balance, by the same process)."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=(), owner_check_s=0.05) as start:
        yield start


async def _at_dc(client: AtpClient, sku: str) -> tuple[int, int, int] | None:
    """(on_hand, reserved, committed) of ``sku`` at DC as served now (None: its group between owners)."""
    try:
        (p,) = await client.availability([(sku, "DC")])
    except grpc.aio.AioRpcError:
        return None
    return p.on_hand, p.reserved, p.committed


async def test_a_part_confirmed_by_the_previous_home_s_saga_after_the_order_was_read_torn_is_released_with_it_Q3(
        start_process: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """o-1 (2 of a, its home's group, at process P1; 1 of b at P2) held. Its Confirm at P1 records the confirmation
    pending at the home and is held before its shares; meanwhile Redis loses b's part (b's group back from before
    it), and the home group is handed over to P2. P2 drives the pending Confirm on: the parts read, a's HELD, b's
    lost — torn (``lost_parts``), nothing confirmed: given up whole (EXPIRED, ``GAVE_UP_DECIDED``). Between that read
    and the give-up of a's part, P1's saga goes on and confirms a's part (its step sent to P2, a's owner now). P1's
    saga can never record the confirmation settled (the home is P2's), so its caller is never told CONFIRMED: a's
    part is released with the order (``releases_confirmed``), once — kept, its 2 units stayed committed for an EXPIRED
    order for good, never offered again, no Release or Fulfil possible (Q3, R2)."""
    running = await processes(start_process, 2)
    (p1, p1_client), (p2, p2_client), a, b = await stocked(running)
    assert p1.engine is not None and p1.engine.orders is not None and p1.membership is not None
    assert p2.engine is not None and p2.engine.orders is not None and p2.membership is not None
    home, part_group = group_of(a), group_of(b)
    direct = aioredis.Redis.from_url(redis_url)
    try:
        image = await _group_saved(direct, part_group)  # b stocked, no part of o-1 there yet
        assert (await p1_client.reserve("o-1", [(a, "DC", 2), (b, "DC", 1)], ttl_seconds=600)).state == \
            pb.RESERVATION_STATE_HELD
        assert p1.engine.home_of("o-1") == home

        # P1's Confirm: recorded pending at the home, then held before its shares are sent.
        held, go_on, applied = asyncio.Event(), asyncio.Event(), asyncio.Event()
        apply = p1.engine.orders._apply

        async def held_before_its_shares(order: Any, shares: Any) -> None:
            held.set()
            await go_on.wait()
            try:
                await apply(order, shares)
            finally:
                applied.set()

        monkeypatch.setattr(p1.engine.orders, "_apply", held_before_its_shares)
        confirming = asyncio.ensure_future(p1_client.confirm("o-1"))
        await until(held.is_set, "P1's Confirm recorded pending at the home")
        record = p1.engine.actors[home].ledger.reservation("o-1")
        assert record is not None and record.pending is not None and record.pending.kind == OrderStep.CONFIRM

        await _group_restored(direct, part_group, image)  # b's part is gone, the order's record kept
    finally:
        await direct.aclose()

    async def part_gone() -> bool:
        return part_group in owned(p2) and await _at_dc(p2_client, b) == (5, 0, 0)

    await until(part_gone, "b's group served again from what Redis holds (no part there), by P2", 40)

    # The home handed over to P2, balancing frozen so that it stays there (P1, below its floor, takes it back).
    monkeypatch.setattr(membership_module, "plan_balance", lambda *_args, **_kw: (None, []))
    give_up_parts = p2.engine.orders._give_up_parts
    given: list[Any] = []  # the order as P2's saga gave it up
    met: list[Any] = []  # a's part as that give-up met it

    def part_of_a() -> Any:
        assert p2.engine is not None
        return p2.engine.actors[home].ledger.reservation(orders.part_id("o-1", home))

    async def after_p1_s_shares(order: Any) -> None:  # P2's saga: the order saved EXPIRED, its parts not given up
        given.append(order)
        await until(lambda: routed(running), "both processes routing the home group to P2")
        go_on.set()  # P1's saga goes on: a's part confirmed at P2, between P2's read and its give-up
        await applied.wait()
        met.append(part_of_a())
        await give_up_parts(order)

    monkeypatch.setattr(p2.engine.orders, "_give_up_parts", after_p1_s_shares)
    await p1.membership._hand_over(home)
    await p2.membership._take(home)
    assert home in owned(p2)
    await until(lambda: routed(running), "both processes routing the home group to P2")

    with pytest.raises(grpc.aio.AioRpcError) as unknown:  # P1 may no longer write the home: never told CONFIRMED
        await confirming
    assert unknown.value.code() == grpc.StatusCode.UNAVAILABLE, unknown.value

    def settled() -> Any:
        assert p2.engine is not None
        record = p2.engine.actors[home].ledger.reservation("o-1")
        return record is not None and record.pending is None and record.state == State.EXPIRED

    await until(settled, "the order settled EXPIRED at its home, P2's")
    assert len(given) == 1 and losses.releases_confirmed(given[0]), "given up once decided"
    assert [part.state for part in met] == [State.CONFIRMED], "the give-up met a's part confirmed by P1's saga"
    part = part_of_a()
    assert part is not None and part.state == State.RELEASED, part
    assert [(line.granted, line.released, line.committed) for line in part.lines] == [(2, 2, 0)], "released once"
    assert await _at_dc(p2_client, a) == (5, 0, 0), "a's units committed for an order given up whole (Q3)"
    assert await _at_dc(p2_client, b) == (5, 0, 0)
    got = await p2_client.get_reservation("o-1")
    assert got.state == pb.RESERVATION_STATE_EXPIRED, got
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # R3: resolved once, the Confirm refused naming it
        await p2_client.confirm("o-1")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.value
