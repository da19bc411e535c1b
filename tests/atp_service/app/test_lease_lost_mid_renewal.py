"""A lease found lost by a renewal whose other half (the members' entry) is still on its way: the
group is given up only once the renewal ends, and a balance meanwhile must not take it again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aredis

from atp_service import AtpService
from atp_service.app import membership as membership_module
from atp_service.app.membership import Membership
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory, services_on
from tests.ports import held_port
from tests.waiting import until

SHARDS = 4


@pytest.fixture
async def start(redis_url: str) -> AsyncIterator[ServiceFactory]:
    # Long leases and no balancing of its own: the renewals and balances below are the test's.
    async with services_on(redis_url, ownership="leases", lease_ms=600_000, balance_ms=200_000,
                           shards=SHARDS, input_streams=()) as start:
        yield start


def members_held_back(monkeypatch: pytest.MonkeyPatch, membership: Membership) -> tuple[asyncio.Event, asyncio.Event]:
    """(leases renewed, members go on): the renewal of the members' entry waits for the second event
    — its node failing over — while the leases' renewal ends and sets the first."""
    leases_done, members_go = asyncio.Event(), asyncio.Event()
    renew_members, renew_leases = membership._renew_members, membership.leases.renew

    async def slow_members() -> str:
        await members_go.wait()
        return await renew_members()

    async def leases_then_tell() -> Any:
        try:
            return await renew_leases()
        finally:
            leases_done.set()

    monkeypatch.setattr(membership, "_renew_members", slow_members)
    monkeypatch.setattr(membership.leases, "renew", leases_then_tell)
    return leases_done, members_go


async def test_a_group_whose_lease_a_renewal_found_lost_is_not_taken_again_before_it_is_given_up(
        start: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The members' key and a group's lease on different nodes: the lease lapsed while Redis did not
    answer, and the renewal that found it lost waited on for the members' entry. The group had left
    the leases held but was still served here; a balance meanwhile saw it free and took it again —
    its install refused ("served already") — then the renewal gave the group up: held and renewed
    by this process, served by none, every call to it refused GROUP_MOVED for good."""
    group = 1
    service, client, membership, _, sku = await stocked_group(start, group, 5)
    assert set(membership.leases.held) == set(range(SHARDS))
    await lease_lapsed(redis_url, membership, group)
    leases_done, members_go = members_held_back(monkeypatch, membership)
    renewal = asyncio.create_task(membership.renew())
    await leases_done.wait()
    refused: AssertionError | None = None
    try:
        await membership.balance()  # the group's lease is free in Redis: is it taken again here?
    except AssertionError as exc:  # its install refused: still served here
        refused = exc
    finally:
        members_go.set()
    await renewal
    monkeypatch.undo()
    await taken_anew(membership, group, "the group given up, then taken again")  # once its old shard is vacated
    assert served_as_held(service), "a group held here is served here"
    (position,) = await client.availability([(sku, "DC")])
    assert position.on_hand == 5
    assert refused is None, f"taken again while still served here: {refused}"


async def stocked_group(start: ServiceFactory, group: int, units: int) -> tuple[AtpService, Any, Membership, Any, str]:
    """One leased process holding every group: (it, its client, its membership, its engine, a SKU of
    ``group`` with ``units`` received at DC)."""
    service, client = await start(port=held_port(), host="127.0.0.1")
    membership, engine = service.membership, service.engine
    assert membership is not None and engine is not None
    sku = next(f"k{i}" for i in range(64) if engine.place(f"k{i}") == group)
    await client.record_events([receipt("in-1", sku, "DC", units)])
    return service, client, membership, engine, sku


def recovery_held_back(monkeypatch: pytest.MonkeyPatch, group: int) -> tuple[asyncio.Event, asyncio.Event]:
    """(recovering, go on): the recovery of ``group`` by a taking (``Membership._take``) sets the first
    and waits for the second, as a long log's replay would."""
    recovering, go_on = asyncio.Event(), asyncio.Event()
    recover = membership_module.recover_shard

    async def held_back(store: Any, shard: int, limits: Any) -> Any:
        if shard == group:
            recovering.set()
            await go_on.wait()
        return await recover(store, shard, limits)

    monkeypatch.setattr(membership_module, "recover_shard", held_back)
    return recovering, go_on


async def lease_lapsed(redis_url: str, membership: Membership, group: int) -> None:
    """``group``'s lease gone from Redis, as after it ran out while Redis did not answer."""
    r = aredis.Redis.from_url(redis_url)
    try:
        await r.delete(membership.leases.key(group))
    finally:
        await r.aclose()


async def taken_anew(membership: Membership, group: int, what: str) -> None:
    """Balances (each pass, here by hand) until ``group`` is held here again."""
    async def taken() -> bool:
        await membership.balance()
        return group in membership.leases.held
    await until(taken, what, 30)


def served_as_held(service: AtpService) -> bool:
    """Every group whose lease this process holds is served here, and only those."""
    assert service.membership is not None and service.engine is not None
    held = set(service.membership.leases.held)
    return held == {g for g in range(SHARDS) if not service.engine.actors[g].vacant}


async def test_a_group_served_here_but_no_longer_held_is_given_up_and_taken_anew(
        start: ServiceFactory, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Should a group ever leave the leases held while still served here (the bug above), a balance
    finding it free does not take it over its own shard: it says so, gives the group up and takes it
    anew at a later pass — served, and held, once more."""
    group = 2
    service, client, membership, _, sku = await stocked_group(start, group, 3)
    del membership.leases.held[group]  # as the bug left it: served here, not held
    await lease_lapsed(redis_url, membership, group)
    await taken_anew(membership, group, "the group given up, then taken anew")
    assert "free to take, yet served here" in caplog.text
    assert service.metrics.registry.get_sample_value("atp_groups_given_up_total", {"why": "unheld"}) == 1
    assert served_as_held(service)
    (position,) = await client.availability([(sku, "DC")])
    assert position.on_hand == 3
