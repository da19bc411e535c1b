"""A SHIPMENT fact naming an order over groups of different service processes (``ownership = leases``) whose
order is refused for good on the way (the step settling it refused by a rule, not for a while): the units
left the building all the same — the stock moves, the order fulfilled by nothing and told why (Q1, R4)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.engine import parts
from reservation import Limits, State
from reservation import _orders as orders
from reservation._unfulfilled import UNFULFILLED
from tests.atp_service.app.test_processes import SHARDS, group_of, processes, shipment
from tests.atp_service.app.test_processes_order_steps import steps_not_reaching, stocked
from tests.atp_service.fact_helpers import unfulfilled_told
from tests.conftest import ServiceFactory, services_on

LIVE_PER_SHARD = 3
"""``max_live_reservations_per_shard`` of these processes: a group is filled to it by a few holds."""


@pytest.fixture
async def start_process(redis_url: str) -> AsyncIterator[ServiceFactory]:
    """As ``test_processes``, each group holding at most ``LIVE_PER_SHARD`` live records."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=(), limits=Limits(max_live_reservations_per_shard=LIVE_PER_SHARD)) as start:
        yield start


def reserve_not_reaching(monkeypatch: pytest.MonkeyPatch, part_id: str) -> list[bool]:
    """While the returned flag is set, the step reserving ``part_id`` is refused as by a shard whose log does
    not answer (nothing applied), wherever it runs: the order's saga stops with the order undecided."""
    return steps_not_reaching(monkeypatch, lambda step: isinstance(step, parts.ReservePart)
                              and step.cmd.reservation_id == part_id)


@pytest.mark.parametrize("shipped_at", ["home", "part"])
async def test_a_shipment_whose_order_is_refused_for_good_by_its_settle_moves_the_stock_fulfilling_nothing_R4(
        start_process: ServiceFactory, monkeypatch: pytest.MonkeyPatch, shipped_at: str) -> None:
    """Order o-1 over a SKU of each process, its saga stopped before the order was decided: one part held, the
    other never reserved. That other part's group is then filled to ``max_live_reservations_per_shard``. A
    SHIPMENT naming o-1, at the order's home (``shipped_at`` "home": the order settled here) or at the process
    of the held part (``"part"``: the order's home asked to settle it, the ``settle`` step), decides the order
    first: its missing part is refused ``CAPACITY_REACHED`` and the order given up whole, for good. That refusal
    refused the fact: ``RecordEvents`` answered ``RESOURCE_EXHAUSTED`` "given up", a refusal no retry of the
    order can help, and the units shipped stayed in on_hand (Q1), offered and sold again. Now the stock moves,
    the fact answered APPLIED with why it fulfilled nothing (R4), counted; the part's hold given back with its
    order (R2)."""
    running = await processes(start_process, 2)
    (home, home_client), (other, other_client), a, b = await stocked(running)
    shipped, missing = (a, b) if shipped_at == "home" else (b, a)
    at, full = (home, other) if shipped_at == "home" else (other, home)
    for service, _ in running:
        assert service.engine is not None and service.engine.orders is not None
        monkeypatch.setattr(service.engine.orders, "drive_unsettled", lambda: None)  # the order left undecided
    flag = reserve_not_reaching(monkeypatch, orders.part_id("o-1", group_of(missing)))
    with pytest.raises(grpc.aio.AioRpcError) as undecided:
        await home_client.reserve("o-1", [(a, "DC", 2), (b, "DC", 1)], ttl_seconds=600)
    assert undecided.value.code() == grpc.StatusCode.UNAVAILABLE
    flag[0] = False
    full_client = home_client if full is home else other_client
    for n in range(LIVE_PER_SHARD + 1):  # the missing part's group filled up
        try:
            await full_client.reserve(f"fill-{n}", [(missing, "DC", 1)], ttl_seconds=600)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            break
    else:
        raise AssertionError(f"group {group_of(missing)} took {LIVE_PER_SHARD + 1} holds")

    at_client = home_client if at is home else other_client
    (answer,) = await at_client.record_events([shipment("out-1", shipped, 1, "o-1")])
    assert answer.outcome == pb.FACT_OUTCOME_APPLIED, answer
    assert answer.detail.startswith(UNFULFILLED) and "CAPACITY_REACHED" in answer.detail, answer.detail
    assert unfulfilled_told(at, "refused") == 1
    (p,) = await at_client.availability([(shipped, "DC")])
    assert (p.on_hand, p.reserved, p.committed) == (4, 0, 0), "shipped once, the order's hold given back"
    assert home.engine is not None
    home_group = home.engine.home_of("o-1")
    assert home_group is not None
    record = home.engine.actors[home_group].ledger.reservation("o-1")
    assert record is not None and record.state == State.EXPIRED and record.pending is None, record
    (again,) = await at_client.record_events([shipment("out-1", shipped, 1, "o-1")])
    assert again.outcome == pb.FACT_OUTCOME_DUPLICATE, again  # applied once (E8)
    (p,) = await at_client.availability([(shipped, "DC")])
    assert p.on_hand == 4, p
