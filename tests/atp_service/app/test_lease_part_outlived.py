"""R2 under leases (``ownership = leases``): an order spanning groups records its decision at its home
only once every part has given up its units. Redis losing the part's change (its group's keys back from
older data, as one Redis Cluster node restarted from an older AOF or RDB, or a whole Redis back from
older data between the part's step and the order's record) leaves the part holding units under an order
that holds nothing. On a real service and a real redis-server, the part's group restored alone."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from atp_client import AtpClient, timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from atp_service.engine.orphans import ORPHAN_AGE_MARGIN_MS
from tests.atp_service.app.leased_pair import MAX_TTL_S, stocked_pair
from tests.atp_service.edge.test_api import T0
from tests.conftest import ServiceFactory
from tests.waiting import until

Image = dict[bytes, tuple[bytes, int]]


async def _group_saved(direct: aioredis.Redis, group: int) -> Image:
    """Every key of ``group``'s slot (its log, snapshot, fence, owner key and lease) as it is now."""
    image: Image = {}
    for key in await direct.keys(f"atp:{{g{group}}}:*"):
        image[key] = (await direct.dump(key), max(await direct.pttl(key), 0))
    return image


async def _group_restored(direct: aioredis.Redis, group: int, image: Image) -> None:
    """``group``'s keys as ``image`` holds them, the other groups' as they are: what was written to it since
    is gone."""
    async with direct.pipeline(transaction=True) as pipe:
        for key in await direct.keys(f"atp:{{g{group}}}:*"):
            pipe.delete(key)
        for key, (dump, ttl) in image.items():
            pipe.restore(key, ttl, dump, replace=True)
        await pipe.execute()


async def _at_s1(client: AtpClient, sku: str, quantity: str) -> int | None:
    """``sku``'s ``quantity`` (reserved, committed, available) at S1 as served now (None: its group between owners)."""
    try:
        (position,) = await client.availability([(sku, "S1")])
    except grpc.aio.AioRpcError:
        return None
    return int(getattr(position, quantity))


async def _reserved(client: AtpClient, sku: str) -> int | None:
    return await _at_s1(client, sku, "reserved")


async def _order_over_two_groups(start_service: ServiceFactory, clock: ManualClock
                                 ) -> tuple[Any, AtpClient, Any, str, str, int]:
    """A leased service on ``clock`` holding order "o": 2 of SKU a (its home's group) and 3 of SKU b (a part in
    the other group). (service, client, engine, a, b, the part's group)."""
    service, client, engine, a, b = await stocked_pair(start_service, clock)
    held = await client.reserve("o", [(a, "S1", 2), (b, "S1", 3)], ttl_seconds=60)
    assert held.state == pb.RESERVATION_STATE_HELD
    part_group = engine.place(b)
    assert engine.home_of("o") == engine.place(a) != part_group, "an order spanning groups: its part in b's"
    return service, client, engine, a, b, part_group


async def test_a_held_part_whose_release_redis_lost_under_a_released_order_is_given_up_R2(
        start_service: ServiceFactory, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Defect: housekeeping gave up a held part only where no group held its order's record (an orphan).
    The order here is RELEASED, nothing pending, and its part in the other group — whose release Redis
    lost — held its units again: never released by anything (parts never expire by themselves), 3 units
    of the SKU withheld from availability for good (R2: no hold outlives its order's decision or TTL).
    Housekeeping now gives up a held part older than the longest TTL whose order's record holds nothing
    (``orphans.LeasedOrphans``, log event ``order_part_outlived``)."""
    clock = ManualClock(T0)
    _service, client, engine, a, b, part_group = await _order_over_two_groups(start_service, clock)
    direct = aioredis.Redis.from_url(redis_url)
    try:
        image = await _group_saved(direct, part_group)
        assert (await client.release("o")).state == pb.RESERVATION_STATE_RELEASED
        assert await _reserved(client, b) == 0
        caplog.set_level(logging.ERROR, logger="atp_service")
        await _group_restored(direct, part_group, image)  # the part's release is gone, the order's kept
    finally:
        await direct.aclose()
    # The owner check finds the group's log short: given up and taken again from what Redis holds.
    await until(lambda: _holds(client, b, 3), "the part's group serving what Redis holds (the part held)", 40)
    assert (await client.get_reservation("o")).state == pb.RESERVATION_STATE_RELEASED

    clock.advance((MAX_TTL_S + 1) * 1000 + ORPHAN_AGE_MARGIN_MS)  # the part older than any order's TTL

    async def released() -> bool:
        await engine.run_maintenance()
        return await _holds(client, b, 0)

    await until(released, "the part held under a released order given up by housekeeping", 20, every_s=0.05)
    assert await _reserved(client, a) == 0
    assert (await client.get_reservation("o")).state == pb.RESERVATION_STATE_RELEASED
    await until(lambda: _outlived(caplog), "the part given up said")
    said = _outlived(caplog)
    assert said and said[0].shard == part_group, [r.getMessage() for r in caplog.records]  # type: ignore[attr-defined]


def _outlived(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The ``order_part_outlived`` lines: said once housekeeping's turn that gave the part up was answered, after
    its change shows to a read, so waited for (``until``), not read once that read shows it."""
    return [r for r in caplog.records if getattr(r, "event", None) == "order_part_outlived"]


async def _holds(client: AtpClient, sku: str, units: int) -> bool:
    return await _reserved(client, sku) == units


@pytest.mark.parametrize("home_elsewhere", [False, True], ids=["home-here", "home-elsewhere"])
async def test_a_held_part_whose_fulfilment_redis_lost_under_a_fulfilled_order_is_fulfilled_R4(
        start_service: ServiceFactory, redis_url: str, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch, home_elsewhere: bool) -> None:
    """The order here is FULFILLED (its Fulfil moved the part's 3 units out of on_hand, R4), and Redis lost
    the part's confirmation and fulfilment: the part HELD again and on_hand 5 again — available 2, as the
    units that left say. Released, they would be offered again though they left (Q5). Defect: the part was
    kept held for good, said by nothing: a COUNT of the 2 left in the building then showed 3 reserved over 2 on
    hand, oversold (available -1) for good. The part is now settled as its order was (fulfilled, the shipment
    stamped when the order's fulfilment was recorded: the COUNT stamped after it absorbs it, E4) and said
    (``order_part_outlived``). ``home_elsewhere``: the sweep sees the order's home as another process's (its
    records read from every group, the part's turn judging them)."""
    engine, client, b, _ = await _fulfilled_part_lost(start_service, redis_url, release_part_first=False)
    assert await _available(client, b) == 2  # on_hand 5 again, 3 of it held: what is left in the building
    now = engine.clock.now_ms()
    await client.record_events([pb.Fact(event_id="count-b", source="wms", kind=pb.FactKind.FACT_KIND_COUNT, sku=b,
                                        location="S1", quantity=2, event_time=timestamp(now))])
    caplog.set_level(logging.ERROR, logger="atp_service")
    if home_elsewhere:
        home_of = engine.home_of
        monkeypatch.setattr(engine, "home_of", lambda rid: None if rid == "o" else home_of(rid))
    sweep = engine._housekeeper._orphans  # whether housekeeping is done asking
    for _ in range(20):  # a pass sweeps every record of these groups: the part looked at in the first
        await engine.run_maintenance()
        await asyncio.sleep(0.05)
    await until(lambda: not sweep.suspects and not sweep._asking, "housekeeping done asking", 20)
    monkeypatch.undo()
    assert await _reserved(client, b) == 0, "the part's units its order fulfilled held for good"
    assert await _available(client, b) == 2, "the 2 the COUNT found, the shipment before it not taken off again"
    assert (await client.get_reservation("o")).state == pb.RESERVATION_STATE_FULFILLED
    said = [r for r in caplog.records if getattr(r, "event", None) == "order_part_outlived"]
    assert said and "fulfilled 3" in said[0].getMessage(), [r.getMessage() for r in caplog.records]


async def test_a_held_part_whose_release_redis_lost_under_a_fulfilled_order_is_given_up_R2(
        start_service: ServiceFactory, redis_url: str) -> None:
    """A FULFILLED order that released the part's units (its other part's fulfilled): Redis lost the part's
    release, the part HELD again — given up by housekeeping as under a RELEASED order, what it held offered."""
    engine, client, b, _ = await _fulfilled_part_lost(start_service, redis_url, release_part_first=True)
    assert await _available(client, b) == 2  # nothing shipped at b: 5 on hand, the part holding 3 again

    async def released() -> bool:
        await engine.run_maintenance()
        return await _holds(client, b, 0)

    await until(released, "the part held under a fulfilled order that released it given up", 20, every_s=0.05)
    assert await _available(client, b) == 5
    assert (await client.get_reservation("o")).state == pb.RESERVATION_STATE_FULFILLED


async def _fulfilled_part_lost(start_service: ServiceFactory, redis_url: str, release_part_first: bool
                               ) -> tuple[Any, AtpClient, str, int]:
    """Order "o" (2 of SKU a, 3 of SKU b: a part in each group, its home a's) confirmed and fulfilled —
    ``release_part_first``: b's line released before — then b's group back from when the part was only
    held; the clock past the age housekeeping looks at. (engine, client, b, the part's group)."""
    clock = ManualClock(T0)
    _service, client, engine, _a, b, part_group = await _order_over_two_groups(start_service, clock)
    direct = aioredis.Redis.from_url(redis_url)
    try:
        image = await _group_saved(direct, part_group)
        assert (await client.confirm("o")).state == pb.RESERVATION_STATE_CONFIRMED
        if release_part_first:
            await client.release("o", [(b, "S1", 3)], operation_id="op-b")
        assert (await client.fulfill("o")).state == pb.RESERVATION_STATE_FULFILLED
        assert await _available(client, b) == (5 if release_part_first else 2)
        await _group_restored(direct, part_group, image)  # the part's changes are gone, the order's kept
    finally:
        await direct.aclose()
    await until(lambda: _holds(client, b, 3), "the part's group serving what Redis holds (the part held)", 40)
    assert (await client.get_reservation("o")).state == pb.RESERVATION_STATE_FULFILLED
    clock.advance((MAX_TTL_S + 1) * 1000 + ORPHAN_AGE_MARGIN_MS)  # the part older than any order's TTL
    return engine, client, b, part_group


async def _available(client: AtpClient, sku: str) -> int | None:
    return await _at_s1(client, sku, "available")


async def _committed(client: AtpClient, sku: str) -> int | None:
    return await _at_s1(client, sku, "committed")


async def _confirmed_part_lost(start_service: ServiceFactory, redis_url: str, released_at_b: int, fulfil: bool
                               ) -> tuple[Any, AtpClient, str]:
    """Order "o" (2 of SKU a, 3 of SKU b: a part in each group, its home a's) confirmed, then ``released_at_b``
    units of b released (3 and not ``fulfil``: the whole order released) and, ``fulfil``, the rest fulfilled;
    then b's group back from when the part was confirmed (its 3 units committed again, on_hand 5 again), the
    order's kept; the clock past the age housekeeping looks at. (engine, client, b)."""
    clock = ManualClock(T0)
    _service, client, engine, _a, b, part_group = await _order_over_two_groups(start_service, clock)
    direct = aioredis.Redis.from_url(redis_url)
    try:
        assert (await client.confirm("o")).state == pb.RESERVATION_STATE_CONFIRMED
        image = await _group_saved(direct, part_group)
        if released_at_b == 3 and not fulfil:
            assert (await client.release("o")).state == pb.RESERVATION_STATE_RELEASED
        elif released_at_b:
            await client.release("o", [(b, "S1", released_at_b)], operation_id="op-b")
        if fulfil:
            assert (await client.fulfill("o")).state == pb.RESERVATION_STATE_FULFILLED
        assert await _committed(client, b) == 0
        await _group_restored(direct, part_group, image)  # the part's changes are gone, the order's kept
    finally:
        await direct.aclose()

    async def committed_again() -> bool:
        return await _committed(client, b) == 3

    await until(committed_again, "the part's group serving what Redis holds (the part confirmed)", 40)
    assert await _available(client, b) == 2  # on_hand 5 again, 3 of it committed
    clock.advance((MAX_TTL_S + 1) * 1000 + ORPHAN_AGE_MARGIN_MS)  # the part older than any order's TTL
    return engine, client, b


@pytest.mark.parametrize("home_elsewhere", [False, True], ids=["home-here", "home-elsewhere"])
async def test_a_confirmed_part_whose_release_redis_lost_under_a_released_order_gives_its_units_back_R3(
        start_service: ServiceFactory, redis_url: str, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch, home_elsewhere: bool) -> None:
    """Defect: housekeeping looked at held parts only ("a confirmed part is a paid order's committed units:
    kept until shipped"). The order here was confirmed, then released (R3: CONFIRMED -> RELEASED), and Redis
    lost its part's release: the part CONFIRMED again, its 3 units committed (Q3) under an order RELEASED with
    nothing pending. Committed units never expire and nothing would ever end the part: 3 units never offered
    again. Housekeeping now gives back what the order released (``orphans.given_back``, log event
    ``order_part_outlived``). ``home_elsewhere``: the sweep sees the order's home as another process's."""
    engine, client, b = await _confirmed_part_lost(start_service, redis_url, released_at_b=3, fulfil=False)
    caplog.set_level(logging.ERROR, logger="atp_service")
    if home_elsewhere:
        home_of = engine.home_of
        monkeypatch.setattr(engine, "home_of", lambda rid: None if rid == "o" else home_of(rid))

    async def given_back() -> bool:
        await engine.run_maintenance()
        return await _committed(client, b) == 0

    await until(given_back, "the committed units of the released order's part given back by housekeeping", 20,
                every_s=0.05)
    monkeypatch.undo()
    assert await _available(client, b) == 5
    assert (await client.get_reservation("o")).state == pb.RESERVATION_STATE_RELEASED
    await until(lambda: _outlived(caplog), "the part's committed units given back said")
    said = _outlived(caplog)
    assert said and "3 committed units" in said[0].getMessage(), [r.getMessage() for r in caplog.records]


async def test_a_confirmed_part_under_a_fulfilled_order_gives_back_what_it_released_and_fulfils_the_rest_Q5(
        start_service: ServiceFactory, redis_url: str) -> None:
    """The order released 1 of b's 3 units by line, then was fulfilled (2 of b shipped, on_hand 3, nothing
    committed: available 3); Redis lost the part's release and fulfilment, and with the fulfilment its move out
    of on_hand: 3 committed, on_hand 5, available 2. The released unit is given back and the 2 fulfilled are
    fulfilled again (on_hand 3, nothing committed: available 3, what is in the building and not promised) —
    released, they would be offered again though they left (Q5: oversold); kept committed, they stood above
    on_hand for good once a COUNT corrected it."""
    engine, client, b = await _confirmed_part_lost(start_service, redis_url, released_at_b=1, fulfil=True)

    sweep = engine._housekeeper._orphans
    for _ in range(20):
        await engine.run_maintenance()
        await asyncio.sleep(0.05)
    await until(lambda: not sweep.suspects and not sweep._asking, "housekeeping done asking", 20)
    assert await _committed(client, b) == 0, "units its order fulfilled committed for good"
    assert await _available(client, b) == 3
    assert (await client.get_reservation("o")).state == pb.RESERVATION_STATE_FULFILLED


async def test_a_confirmed_part_whose_fulfilment_redis_lost_under_a_fulfilled_order_is_fulfilled_R4(
        start_service: ServiceFactory, redis_url: str) -> None:
    """The order fulfilled whole (b's 3 units shipped): Redis lost the part's fulfilment and its move out of
    on_hand, the part CONFIRMED again with 3 committed, available 2 — what is left. Defect: the 3 stayed committed
    for good: a COUNT of the 2 left then showed them oversold (available -1). They are fulfilled, the shipment
    stamped when the order's fulfilment was recorded: a COUNT stamped after it replaces on_hand (E2), nothing
    taken off twice."""
    engine, client, b = await _confirmed_part_lost(start_service, redis_url, released_at_b=0, fulfil=True)
    sweep = engine._housekeeper._orphans
    for _ in range(20):
        await engine.run_maintenance()
        await asyncio.sleep(0.05)
    await until(lambda: not sweep.suspects and not sweep._asking, "housekeeping done asking", 20)
    assert await _committed(client, b) == 0, "units its order fulfilled committed for good"
    assert await _available(client, b) == 2, "units the order's Fulfil moved out of on_hand offered again"
    now = engine.clock.now_ms()
    await client.record_events([pb.Fact(event_id="count-b", source="wms", kind=pb.FactKind.FACT_KIND_COUNT, sku=b,
                                        location="S1", quantity=2, event_time=timestamp(now))])
    assert await _available(client, b) == 2
