"""An order whose home lost its record whole (Redis took the home's group back to before the order opened, R7) while
its line at another group was confirmed and shipped, its Reserve retried: opened again at its home, its shipped part
replayed by that group's Reserve step (resolved less than half the retention before, by its group's clock). Where that
saga cannot decide it at once — (a) a step refused by a rule (another group full), its parts then read back; (b) a step
that did not land, housekeeping deciding the pending order again (``reserve-opened``, past its TTL too) — the parts are
judged by the order's opening time by its home's clock. On a real service and a real redis-server (``ownership =
leases``, one process serving every group), the home group's clock ahead of the others by just under a quarter of the
retention (its host an eighth ahead, theirs an eighth behind: the most the service allows, R3): the order is decided
again CONFIRMED from its shipped part (R3, R5, Q3), never given up (its caller ships it) nor its shipped line held
again (hidden stock), whether the line shipped minutes or hours before the retry."""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from atp_service.engine import parts
from atp_service.engine.clock import GroupClock
from atp_service.engine.router import Engine
from reservation import Limits, State
from reservation import _orders as orders
from tests.atp_service.app.leased_pair import LEASED
from tests.atp_service.app.test_lease_part_outlived import _at_s1, _group_restored, _group_saved
from tests.atp_service.app.test_processes_order_steps import steps_not_reaching
from tests.atp_service.edge.test_api import T0, receipt
from tests.conftest import ServiceFactory
from tests.ports import held_port
from tests.waiting import until

RETENTION_MS = Limits().retention_ms
AHEAD_MS = RETENTION_MS // 4 - 60_000
"""How far the home group's clock runs ahead of the others': two gaps the service allows between hosts' clocks (each
under an eighth of the retention), the home's host ahead, the others' behind."""
SHIPPED_AGO_MS = {"minutes": 120_000, "hours": RETENTION_MS // 4 + 120_000}
"""How long before the retry the line shipped, by the clock of its group: either way under half the retention there,
so its Reserve step replays the shipped part; hours before, that and the clocks' gap add up past half the retention by
the home's clock."""


async def _stocked(start_service: ServiceFactory, clock: ManualClock, groups: int,
                   **settings: Any) -> tuple[AtpClient, Engine, list[str]]:
    """A leased service of ``groups`` groups on ``clock``, every group taken, 5 of S1 received at a SKU of each:
    (client, engine, the SKUs by group, lowest first)."""
    service, client = await start_service(clock=clock, port=held_port(), **{**LEASED, "shards": groups, **settings})
    engine = service.engine
    assert engine is not None
    await until(lambda: all(not actor.vacant for actor in engine.actors), "every group taken")
    found: dict[int, str] = {}
    for i in range(1000):
        found.setdefault(engine.place(f"SKU-{i}"), f"SKU-{i}")
    skus = [found[g] for g in sorted(found)]
    assert len(skus) == groups
    await client.record_events([receipt(f"s-{sku}", sku, "S1", 5, T0) for sku in skus])
    return client, engine, skus


async def _lost_at(redis_url: str, client: AtpClient, engine: Engine, lost: list[int], asked: list[tuple[str, str, int]]
                   ) -> None:
    """Order ``o`` (``asked``) reserved, confirmed and its second line shipped, then the groups ``lost`` back from
    before it opened (its record at its home gone, its parts there too); waits until they serve what Redis holds."""
    direct = aioredis.Redis.from_url(redis_url)
    try:
        before = {group: await _group_saved(direct, group) for group in lost}
        assert (await client.reserve("o", asked, ttl_seconds=60)).state == pb.RESERVATION_STATE_HELD
        assert (await client.confirm("o")).state == pb.RESERVATION_STATE_CONFIRMED  # told to the caller (the OMS)
        sku, location, quantity = asked[1]
        shipped = await client.fulfill("o", [(sku, location, quantity)], "ship-b")
        assert shipped.state == pb.RESERVATION_STATE_CONFIRMED
        for group, image in before.items():
            await _group_restored(direct, group, image)
    finally:
        await direct.aclose()

    def forgot() -> bool:  # the owner check finds each group's log short: taken again from Redis
        return all(engine.actors[g].ledger.reservation(orders.part_id("o", g)) is None and
                   engine.actors[g].ledger.reservation("o") is None for g in lost)

    await until(forgot, "the groups back from older data serving what Redis holds", 40)
    await until(lambda: all(not engine.actors[g].vacant for g in lost), "taken again", 40)


def _home_ahead(engine: Engine, clock: ManualClock, home: int, shipped_ago_ms: int) -> None:
    """``shipped_ago_ms`` pass; the home group then counts on from a host ``AHEAD_MS`` ahead (``GroupClock``)."""
    clock.advance(shipped_ago_ms)
    engine.actors[home].clock = GroupClock(clock, clock.now_ms() + AHEAD_MS)


async def _decided_again(client: AtpClient, engine: Engine, asked: list[tuple[str, str, int]]) -> None:
    """Order ``o`` CONFIRMED as its caller was told: its unshipped lines committed, its shipped one never held again."""
    order = await client.get_reservation("o")
    assert order.state == pb.RESERVATION_STATE_CONFIRMED, order
    expected = [(0, quantity) if i == 1 else (quantity, 0) for i, (_, _, quantity) in enumerate(asked)]
    assert [(line.committed, line.fulfilled) for line in order.lines] == expected, order
    shipped = asked[1][0]
    assert (await _at_s1(client, shipped, "reserved"), await _at_s1(client, shipped, "committed")) == (0, 0), \
        "the shipped line held again"
    assert (await _at_s1(client, shipped, "available")) == 5 - asked[1][2]
    part = engine.actors[engine.place(shipped)].ledger.reservation(orders.part_id("o", engine.place(shipped)))
    assert part is not None and part.state == State.FULFILLED, part
    for sku, _, quantity in (asked[0], *asked[2:]):
        assert await _at_s1(client, sku, "committed") == quantity, f"{sku} offered again"


@pytest.mark.parametrize("shipped_ago", list(SHIPPED_AGO_MS))
async def test_an_order_opened_again_whose_step_a_full_group_refused_is_decided_again_from_its_shipped_part_R3_R5(
        start_service: ServiceFactory, redis_url: str, shipped_ago: str) -> None:
    """Order ``o``: 2 of ``a`` (its home's group), 3 of ``b`` (shipped), 1 of ``c``; the groups of ``a`` and ``c``
    (one Redis node) back from before it opened, ``c``'s then at its bound on live records. The retry opens it again:
    ``b``'s step replays its shipped part, ``c``'s is refused CAPACITY_REACHED, and the parts are read back. The
    order is decided again CONFIRMED from its shipped part (``c``'s part committed again, all or none: Q3), never
    given up with ``a``'s units offered to others while its caller ships them."""
    clock = ManualClock(T0)
    limits = dataclasses.replace(LEASED["limits"], max_live_reservations_per_shard=2)
    client, engine, (a, b, c) = await _stocked(start_service, clock, 3, limits=limits)
    asked = [(a, "S1", 2), (b, "S1", 3), (c, "S1", 1)]
    home = engine.place(a)
    await _lost_at(redis_url, client, engine, [home, engine.place(c)], asked)
    _home_ahead(engine, clock, home, SHIPPED_AGO_MS[shipped_ago])
    for other in ("x1", "x2"):  # c's group at its bound on live records
        assert (await client.reserve(other, [(c, "S1", 1)], ttl_seconds=60)).state == pb.RESERVATION_STATE_HELD

    again = await client.reserve("o", asked, ttl_seconds=60)
    assert again.replayed and again.state != pb.RESERVATION_STATE_REJECTED, again  # as first answered (R5)
    await _decided_again(client, engine, asked)


@pytest.mark.parametrize("past_ttl", [False, True], ids=["within_ttl", "past_ttl"])
@pytest.mark.parametrize("shipped_ago", list(SHIPPED_AGO_MS))
async def test_an_order_opened_again_and_left_pending_is_decided_again_by_housekeeping_from_its_shipped_part_R3_R5(
        start_service: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch, shipped_ago: str,
        past_ttl: bool) -> None:
    """Order ``o``: 2 of ``a`` (its home's group), 3 of ``b`` (shipped); ``a``'s group back from before it opened. The
    retry opens it again: ``b``'s step replays its shipped part, ``a``'s does not land (its log silent), the caller
    told UNAVAILABLE, the order pending. Housekeeping decides it again (``reserve-opened``: judged by its opening by
    the home's clock), within its TTL or past it: CONFIRMED from its shipped part — never ``b``'s units held again
    for it (decided HELD, expiring: ``a``'s units offered to others while its caller ships them), never given up."""
    clock = ManualClock(T0)
    client, engine, (a, b) = await _stocked(start_service, clock, 2)
    asked = [(a, "S1", 2), (b, "S1", 3)]
    home = engine.place(a)
    await _lost_at(redis_url, client, engine, [home], asked)
    _home_ahead(engine, clock, home, SHIPPED_AGO_MS[shipped_ago])
    part_a = orders.part_id("o", home)
    silent = steps_not_reaching(monkeypatch, lambda step: isinstance(step, parts.ReservePart) and
                                step.cmd.reservation_id == part_a)

    with pytest.raises(grpc.aio.AioRpcError) as first:
        await client.reserve("o", asked, ttl_seconds=60)
    assert first.value.code() == grpc.StatusCode.UNAVAILABLE, first.value
    order = engine.actors[home].ledger.reservation("o")
    assert order is not None and order.pending is not None, "opened again, undecided"
    silent[0] = False
    if past_ttl:
        clock.advance(61_000)
    await engine.run_maintenance()
    await _decided_again(client, engine, asked)
