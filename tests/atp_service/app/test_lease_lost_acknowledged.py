"""Redis back from older data (a restart from an older AOF or RDB, a failover to a replica that lagged)
loses entries a leased group had acknowledged, and the group is then taken by a later taking — another
process's, or this one's again — before its old owner's owner check reads the log (its lease ran out
while Redis was away, or while it was paused). The taking recovers what Redis holds: the lost entries
are gone for good. Whatever order the old owner then learns it in — its renewal finding the lease gone,
a write of its refused FENCED, its owner check reading a log the new owner wrote past its entries —
it must say loudly that acknowledged entries were lost (ERROR, ``atp_shard_failures_total``, as the owner
check does when it finds the log short first), never only ``group_lost`` at WARNING."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aredis

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from tests.atp_service.app.test_lease_lost_mid_renewal import lease_lapsed
from tests.atp_service.app.test_redis_lost_tail import restored, saved
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory, services_on
from tests.ports import held_port
from tests.waiting import until

SHARDS, GROUP = 4, 2


@pytest.fixture
async def start(redis_url: str) -> AsyncIterator[ServiceFactory]:
    # Long leases, no balancing nor owner check of their own: each step below is the test's, in its order.
    async with services_on(redis_url, ownership="leases", lease_ms=600_000, balance_ms=200_000,
                           owner_check_s=3600, shards=SHARDS, input_streams=()) as start:
        yield start


class Lost:
    """Two processes: ``old`` held every group and acknowledged a Reserve of 4 units in ``GROUP``; Redis
    then went back to before it, and ``new`` took ``GROUP`` (its lease gone, as after it ran out)."""

    old: AtpService
    old_client: AtpClient
    new: AtpService
    new_client: AtpClient
    sku: str


async def lost_then_taken(start: ServiceFactory, redis_url: str, by_itself: bool = False) -> Lost:
    """``by_itself``: no other process; the old owner takes the group again itself."""
    s = Lost()
    s.old, s.old_client = await start(port=held_port(), host="127.0.0.1")
    assert s.old.membership is not None and s.old.engine is not None
    assert set(s.old.membership.leases.held) == set(range(SHARDS))
    s.sku = next(f"k{i}" for i in range(64) if s.old.engine.place(f"k{i}") == GROUP)
    await s.old_client.record_events([receipt("in-1", s.sku, "DC", 10)])
    r = aredis.Redis.from_url(redis_url)
    try:
        image = await saved(r)
        answer = await s.old_client.reserve("r1", [(s.sku, "DC", 4)], ttl_seconds=600)
        assert answer.state == pb.RESERVATION_STATE_HELD  # acknowledged: durable in Redis
        await restored(r, image, at_once=True)  # Redis back from before r1: the owner key and lease still old's
    finally:
        await r.aclose()
    await lease_lapsed(redis_url, s.old.membership, GROUP)  # it ran out while Redis was away (or old was paused)
    if by_itself:
        s.new, s.new_client = s.old, s.old_client
        return s
    s.new, s.new_client = await start(port=held_port(), host="127.0.0.1")
    assert s.new.membership is not None
    await s.new.membership.balance()
    assert GROUP in s.new.membership.leases.held
    return s


def failures(service: AtpService) -> float:
    return service.metrics.registry.get_sample_value("atp_shard_failures_total") or 0.0


def given_up(service: AtpService, why: str) -> float:
    return service.metrics.registry.get_sample_value("atp_groups_given_up_total", {"why": why}) or 0.0


async def given_up_here(service: AtpService) -> None:
    """Until ``GROUP`` is given up here: vacated, and what comes after (its log read back) done."""
    membership, engine = service.membership, service.engine
    assert membership is not None and engine is not None
    await until(lambda: engine.actors[GROUP].vacant and GROUP not in membership._vacating,
                "the group given up by its old owner", 30)


async def lost_quietly(old: AtpService, old_client: AtpClient, sku: str, order: str,
                       caplog: pytest.LogCaptureFixture) -> None:
    """``GROUP``, taken by another process meanwhile, lost at ``old`` by its renewal (``order`` "renewal") or
    by a write of ``sku`` refused FENCED: given up once, for its lease or fenced; nothing said lost or failed."""
    if order == "renewal":
        assert old.membership is not None
        await old.membership.renew()
    else:
        with pytest.raises(grpc.aio.AioRpcError):
            await old_client.reserve("r2", [(sku, "DC", 1)], ttl_seconds=600)
    await given_up_here(old)
    assert given_up(old, "lease") + given_up(old, "fenced") == 1
    assert not said_lost(caplog) and failures(old) == 0


def said_lost(caplog: pytest.LogCaptureFixture) -> bool:
    """An ERROR line saying Redis lost acknowledged entries (of ``GROUP``)."""
    return any(rec.levelname == "ERROR" and "lost acknowledged entries" in (rec.getMessage() + str(rec.exc_info))
               for rec in caplog.records)


async def answered_everywhere(s: Lost) -> None:
    """Liveness: every group held by one of the two and answered through either; the lost hold served by none."""
    assert s.old.membership is not None and s.new.membership is not None and s.old.engine is not None

    async def all_held() -> bool:
        await s.old.membership.balance()  # type: ignore[union-attr]
        await s.new.membership.balance()  # type: ignore[union-attr]
        return set(s.old.membership.leases.held) | set(s.new.membership.leases.held) == set(range(SHARDS))  # type: ignore[union-attr]

    await until(all_held, "every group held again", 30)
    await s.old.membership.balance()  # the routes read again: each knows who holds what now
    await s.new.membership.balance()
    skus = [next(f"k{i}" for i in range(64) if s.old.engine.place(f"k{i}") == g) for g in range(SHARDS)]
    for client in (s.old_client, s.new_client):
        positions = await client.availability([(sku, "DC") for sku in skus])
        assert len(positions) == SHARDS
    (position,) = await s.new_client.availability([(s.sku, "DC")])
    assert (position.on_hand, position.reserved) == (10, 0), "served as Redis holds it (r1 lost)"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await s.new_client.get_reservation("r1")
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def test_owner_check_first_with_the_new_owner_idle_says_lost_loudly(
        start: ServiceFactory, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The known loud case: the old owner's owner check reads a log ending before its durable entry."""
    s = await lost_then_taken(start, redis_url)
    before = failures(s.old)
    await s.old.engine.check_logs_reach()  # type: ignore[union-attr]
    assert failures(s.old) == before + 1
    assert said_lost(caplog)
    await answered_everywhere(s)


async def test_renewal_first_says_lost_loudly(
        start: ServiceFactory, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The old owner's renewal finds the lease gone before any owner check: given up (``lease``)."""
    s = await lost_then_taken(start, redis_url)
    before = failures(s.old)
    assert s.old.membership is not None
    await s.old.membership.renew()
    await given_up_here(s.old)
    assert given_up(s.old, "lease") == 1
    await answered_everywhere(s)
    assert said_lost(caplog), "acknowledged entries lost, said only as group_lost WARNING"
    assert failures(s.old) == before + 1


async def test_the_old_owner_taking_it_again_itself_says_lost_loudly(
        start: ServiceFactory, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """One process: Redis away past the lease and back from older data; the renewal finds the lease gone,
    the group is given up and taken again here, from what Redis holds."""
    s = await lost_then_taken(start, redis_url, by_itself=True)
    assert s.old.membership is not None
    await s.old.membership.renew()
    await given_up_here(s.old)

    async def taken() -> bool:
        await s.old.membership.balance()  # type: ignore[union-attr]
        return not s.old.engine.actors[GROUP].vacant  # type: ignore[union-attr]

    await until(taken, "the group taken again", 30)
    (position,) = await s.old_client.availability([(s.sku, "DC")])
    assert (position.on_hand, position.reserved) == (10, 0)
    assert said_lost(caplog), "acknowledged entries lost, said only as group_lost WARNING"
    assert failures(s.old) == 1


@pytest.mark.parametrize("writes", [1, 2])
async def test_owner_check_after_the_new_owner_wrote_says_lost_loudly(
        start: ServiceFactory, redis_url: str, caplog: pytest.LogCaptureFixture, writes: int) -> None:
    """The new owner wrote past where Redis went back: 1 entry (one receipt) ends the log exactly at the old
    owner's durable entry (neither short nor foreign), more end it past it (taken over: skipped). The old
    owner learns it only at its renewal (``lease``)."""
    s = await lost_then_taken(start, redis_url)
    assert s.old.engine is not None
    other = [f"k{i}" for i in range(64) if s.old.engine.place(f"k{i}") == GROUP][1]
    for i in range(writes):
        await s.new_client.record_events([receipt(f"new-{i}", other, "DC", 1)])
    before = failures(s.old)
    await s.old.engine.check_logs_reach()  # type: ignore[union-attr]
    assert s.old.membership is not None
    await s.old.membership.renew()
    await given_up_here(s.old)
    await answered_everywhere(s)
    assert said_lost(caplog), "acknowledged entries lost, said only as group_lost WARNING"
    assert failures(s.old) == before + 1


async def test_a_write_refused_fenced_first_says_lost_loudly(
        start: ServiceFactory, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The old owner's next write in the group is refused FENCED: given up (``fenced``)."""
    s = await lost_then_taken(start, redis_url)
    before = failures(s.old)
    with pytest.raises(grpc.aio.AioRpcError):
        await s.old_client.reserve("r2", [(s.sku, "DC", 1)], ttl_seconds=600)
    await given_up_here(s.old)
    assert given_up(s.old, "fenced") == 1
    await answered_everywhere(s)
    assert said_lost(caplog), "acknowledged entries lost, said only as group_lost WARNING"
    assert failures(s.old) == before + 1



@pytest.mark.parametrize("order", ["renewal", "fenced"])
async def test_a_routine_takeover_with_nothing_lost_stays_quiet(
        start: ServiceFactory, redis_url: str, caplog: pytest.LogCaptureFixture, order: str) -> None:
    """The control: the old owner paused past its lease (Redis lost nothing), the group taken and written by
    another. Its log holds the old owner's newest entry as made: a takeover, at WARNING only."""
    old, old_client = await start(port=held_port(), host="127.0.0.1")
    assert old.membership is not None and old.engine is not None
    skus = [f"k{i}" for i in range(64) if old.engine.place(f"k{i}") == GROUP]
    await old_client.record_events([receipt("in-1", skus[0], "DC", 10)])
    await old_client.reserve("r1", [(skus[0], "DC", 4)], ttl_seconds=600)
    await lease_lapsed(redis_url, old.membership, GROUP)
    new, new_client = await start(port=held_port(), host="127.0.0.1")
    assert new.membership is not None
    await new.membership.balance()
    assert GROUP in new.membership.leases.held
    for i in range(3):
        await new_client.record_events([receipt(f"new-{i}", skus[1], "DC", 1)])
    await lost_quietly(old, old_client, skus[0], order, caplog)
    (position,) = await new_client.availability([(skus[0], "DC")])
    assert (position.on_hand, position.reserved) == (10, 4)
