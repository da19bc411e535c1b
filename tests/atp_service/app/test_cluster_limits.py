"""A shard's bounds on the reservations it remembers hold for orders spanning groups on a Redis
Cluster too (sagas of one-group parts): the order's own record at its home counts against them, and
a Reserve past them is refused ``CAPACITY_REACHED`` naming the limit, as a one-group Reserve is."""

from __future__ import annotations

import grpc
import pytest

from atp_service import ManualClock
from reservation import Limits
from tests.atp_service.app.test_cluster_mode import _two_groups
from tests.atp_service.app.test_cluster_mode import start_service as start_service  # the fixture, re-exported
from tests.atp_service.edge.test_api import T0
from tests.conftest import ServiceFactory


@pytest.mark.parametrize("bound", ["live", "resolved"])
async def test_new_orders_at_a_full_home_are_refused_capacity_reached_and_leave_no_record(
        start_service: ServiceFactory, bound: str) -> None:
    """The saga saved an order's record at its home before any bound was asked: past
    ``max_live_reservations_per_shard`` (or ``..._resolved_...``) every Reserve with a new id left one
    more record there, held until its TTL (up to 7 days) and driven on by housekeeping every pass,
    while its caller heard UNAVAILABLE (outcome unknown) — not the refusal a one-group Reserve gets."""
    limits = Limits(max_live_reservations_per_shard=4, max_resolved_reservations_per_shard=4)
    service, client, a, b = await _two_groups(start_service, ManualClock(T0), a=1000, b=1000, limits=limits)
    engine = service.engine
    assert engine is not None
    home = engine.actors[min(engine.place(a), engine.place(b))].ledger
    for n in range(2):  # two orders: with their parts, four records at the home
        held = await client.reserve(f"fill-{n}", [(a, "S1", 1), (b, "S1", 1)], ttl_seconds=600)
        if bound == "resolved":
            await client.release(f"fill-{n}")
    remembered = len(home.reservations)
    assert remembered == 4, held
    for n in range(10):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.reserve(f"new-{n}", [(a, "S1", 1), (b, "S1", 1)], ttl_seconds=600)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value.details()
        assert f"max_{bound}_reservations_per_shard" in (refused.value.details() or "")
    assert len(home.reservations) == remembered, "a refused order left records at its home"
    assert engine.orders is not None and not engine.orders.unsettled
