"""R3, Q3, R5 under leases (``ownership = leases``): an order spanning groups is recorded at its home first (its
Reserve pending), then each part is reserved, then its decision is recorded; a Confirm is recorded at the home
and then carried to every part. Redis losing the home group's tail back to before the decision (its keys from
older data: one Redis Cluster node restarted from an older AOF or RDB, a failover to a lagging replica) takes the
order's record back to undecided while the part in the other group stays CONFIRMED — its units committed for a
paid order. On a real service and a real redis-server, the home's group restored alone to an image saved while
the Reserve was under way."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from atp_service.engine import orders as saga
from atp_service.engine.parts import ReservePart
from reservation import Limits
from tests.atp_service.app.leased_pair import LEASED, stocked_pair
from tests.atp_service.app.test_lease_part_outlived import Image, _at_s1, _group_restored, _group_saved
from tests.atp_service.edge.test_api import T0
from tests.conftest import ServiceFactory
from tests.waiting import until

LIMITS: Limits = LEASED["limits"]
Meanwhile = Callable[[ManualClock, AtpClient, str, str], Awaitable[None]]
"""What befalls the confirmed order before its home's group goes back (clock, client, a, b)."""


async def _home_lost_its_decision(start_service: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch,
                                  home_part: bool, meanwhile: Meanwhile | None = None, limits: Limits = LIMITS,
                                  ) -> tuple[ManualClock, Any, AtpClient, str, str]:
    """Order "o" (2 of a, 3 of b) reserved, held and confirmed (then ``meanwhile``); then the home's group back from
    while its Reserve was under way: the record undecided, its part there held (``home_part``; else gone: saved
    before the parts were reserved), b's part CONFIRMED (or as ``meanwhile`` left it). (clock, engine, client, a,
    b). ``limits``: the service's."""
    clock = ManualClock(T0)
    _, client, engine, a, b = await stocked_pair(start_service, clock, limits=limits)
    home = engine.place(a)
    direct = aioredis.Redis.from_url(redis_url)
    images: list[Image] = []
    reserve_parts = saga.run_parts

    async def saved_mid_reserve(engine_: Any, steps: dict[int, Any]) -> dict[int, Any]:
        reserving = not images and all(isinstance(step, ReservePart) for step in steps.values())
        if reserving and not home_part:
            images.append(await _group_saved(direct, home))  # the record durable, no part reserved yet
        done = await reserve_parts(engine_, steps)
        if reserving and home_part:
            images.append(await _group_saved(direct, home))  # its part there held, the decision not recorded
        return done

    try:
        monkeypatch.setattr(saga, "run_parts", saved_mid_reserve)
        held = await client.reserve("o", [(a, "S1", 2), (b, "S1", 3)], ttl_seconds=60)
        monkeypatch.undo()
        assert held.state == pb.RESERVATION_STATE_HELD and len(images) == 1
        assert engine.home_of("o") == home != engine.place(b), "an order spanning groups, its home a's"
        assert (await client.confirm("o")).state == pb.RESERVATION_STATE_CONFIRMED  # told to the caller (the OMS)
        assert (await _at_s1(client, a, "committed"), await _at_s1(client, b, "committed")) == (2, 3)
        if meanwhile is not None:
            await meanwhile(clock, client, a, b)
        await _group_restored(direct, home, images[0])  # the decision and confirmation gone, b's part kept
    finally:
        await direct.aclose()

    async def undecided_again() -> bool:  # the owner check finds the home's log short: taken again from Redis
        return (await _at_s1(client, a, "committed"), await _at_s1(client, a, "reserved")) == (0, 2 if home_part else 0)

    await until(undecided_again, "the home's group serving what Redis holds (the order's Reserve pending)", 40)
    assert engine.actors[home].ledger.reservation("o").pending is not None
    assert meanwhile is not None or await _at_s1(client, b, "committed") == 3
    return clock, engine, client, a, b


async def _driven_on(engine: Any, client: AtpClient, a: str) -> None:
    """Housekeeping run until it has driven the order on (found pending when its home's group was taken again)."""
    async def decided() -> bool:
        await engine.run_maintenance()
        record = engine.actors[engine.place(a)].ledger.reservation("o")
        return record is not None and record.pending is None

    await until(decided, "the order driven on by housekeeping", 20, every_s=0.05)


@pytest.mark.parametrize("home_part", [True, False], ids=["home-part-held", "home-part-lost"])
@pytest.mark.parametrize("ttl_passed", [False, True], ids=["within-ttl", "past-ttl"])
async def test_an_order_whose_home_lost_its_decision_is_decided_again_confirmed_R3_Q3(
        start_service: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, home_part: bool, ttl_passed: bool) -> None:
    """Defect (found by review): the record undecided, the saga decided the order again as a Reserve does — b's
    CONFIRMED part is not one that holds, so a's held part was released and the order recorded REJECTED (a's 2
    units offered again, b's 3 committed for good under a refused order); past its TTL, the order was given up
    whole and every part released, b's confirmed one too (available 5 at b) — while the caller, told CONFIRMED,
    ships them: oversold (Q5; R3: resolved once; Q3: committed units never expire). A confirmed part proves the
    order was decided and confirmed: it is decided again from its parts, CONFIRMED (a's part held, or reserved
    anew where Redis lost it too, then confirmed), log event ``order_decision_restored``."""
    clock, engine, client, a, b = await _home_lost_its_decision(start_service, redis_url, monkeypatch, home_part)
    caplog.set_level(logging.ERROR, logger="atp_service")
    if ttl_passed:
        clock.advance(61_000)  # past the TTL of the record Redis holds: it would be given up undecided
    await _driven_on(engine, client, a)
    assert await _at_s1(client, b, "committed") == 3, "a confirmed part's committed units released"
    assert (await _at_s1(client, a, "committed"), await _at_s1(client, a, "reserved")) == (2, 0)
    assert (await _at_s1(client, a, "available"), await _at_s1(client, b, "available")) == (3, 2)
    assert (await client.get_reservation("o")).state == pb.RESERVATION_STATE_CONFIRMED
    said = [r for r in caplog.records if getattr(r, "event", None) == "order_decision_restored"]
    assert said and said[0].reservation_id == "o", [r.getMessage() for r in caplog.records]  # type: ignore[attr-defined]
    assert (await client.fulfill("o")).state == pb.RESERVATION_STATE_FULFILLED  # the paid order ships whole
    assert (await _at_s1(client, a, "available"), await _at_s1(client, b, "available")) == (3, 2)


async def test_a_retry_of_the_reserve_of_an_order_whose_home_lost_its_decision_answers_it_confirmed_R5(
        start_service: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The OMS retrying its Reserve (its answer lost) drives the order on itself: answered the decision it was
    answered the first time, HELD with both lines granted, a replay (R5; a Reserve's answer is its decision) — it
    was answered REJECTED, its held part released, a decision never made before. The order reads CONFIRMED, and only
    a Release then gives the committed units back (R3: CONFIRMED -> RELEASED)."""
    _clock, _engine, client, a, b = await _home_lost_its_decision(start_service, redis_url, monkeypatch, True)
    again = await client.reserve("o", [(a, "S1", 2), (b, "S1", 3)], ttl_seconds=60)
    assert (again.state, again.replayed) == (pb.RESERVATION_STATE_HELD, True), again
    assert [(line.sku, line.granted) for line in again.lines] == [(a, 2), (b, 3)]
    assert (await client.get_reservation("o")).state == pb.RESERVATION_STATE_CONFIRMED
    assert (await _at_s1(client, a, "committed"), await _at_s1(client, b, "committed")) == (2, 3)
    assert (await client.release("o")).state == pb.RESERVATION_STATE_RELEASED
    assert (await _at_s1(client, a, "available"), await _at_s1(client, b, "available")) == (5, 5)


def _b_shipped_half_a_retention_ago(retention_ms: int) -> Meanwhile:
    """b's line fulfilled (its part FULFILLED), then half of ``retention_ms`` and a moment passed."""
    async def shipped(clock: ManualClock, client: AtpClient, _a: str, b: str) -> None:
        done = await client.fulfill("o", [(b, "S1", 3)], "ship-b")
        assert done.state == pb.RESERVATION_STATE_CONFIRMED, done
        assert (await _at_s1(client, b, "committed"), await _at_s1(client, b, "available")) == (0, 2)
        clock.advance(retention_ms // 2 + 1)

    return shipped


@pytest.mark.parametrize("by", ["retry-within-ttl", "retry-past-ttl", "housekeeping"])
async def test_an_order_decided_again_long_after_a_line_shipped_never_holds_that_line_again_R4_R5_Q3(
        start_service: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch, by: str) -> None:
    """Defect (found by review): the order confirmed, its b line shipped (b's part FULFILLED), and half the retention
    later its home's group back from before its decision. Deciding it again from its parts, the saga reserves every
    part again; b's group took its own FULFILLED part, resolved half the retention ago by its clock, for an earlier
    order's of the id (``forgotten``) and reserved it anew: 3 more units at b where 2 are left, refused, and the
    order decided again as a Reserve decides it, REJECTED — a's 2 committed units released, offered again while the
    caller, told CONFIRMED, ships them. A part resolved after its order opened is its own, however long ago: replayed
    (R5). ``retry-within-ttl``: a retention of 100 s, half of it within the order's 60 s TTL (its Reserve retried
    decides it again at once, not through its expiry)."""
    limits = dataclasses.replace(LIMITS, retention_ms=100_000) if by == "retry-within-ttl" else LIMITS
    _clock, engine, client, a, b = await _home_lost_its_decision(
        start_service, redis_url, monkeypatch, True, _b_shipped_half_a_retention_ago(limits.retention_ms), limits)
    if by == "housekeeping":
        await _driven_on(engine, client, a)
    else:
        again = await client.reserve("o", [(a, "S1", 2), (b, "S1", 3)], ttl_seconds=60)
        assert again.replayed, again
    order = await client.get_reservation("o")
    assert order.state == pb.RESERVATION_STATE_CONFIRMED, order
    assert [(line.committed, line.fulfilled) for line in order.lines] == [(2, 0), (0, 3)], order
    assert (await _at_s1(client, b, "committed"), await _at_s1(client, b, "available")) == (0, 2), "b held again"
    assert (await _at_s1(client, a, "committed"), await _at_s1(client, a, "available")) == (2, 3)
