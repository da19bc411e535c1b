"""Calls refused at the edge's own bounds on what callers keep open (``max_reserve_streams``,
``max_watchers``), caused on a real service with a real Redis, fire the capacity alert over the
values the service's own /metrics endpoint exports (tests/deploy/scraped_alerts.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.channel_helpers import write_estate
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.edge.test_servicer import refusal
from tests.conftest import ServiceFactory

from .scraped_alerts import Scrape, firing, scrape


def refusals(samples: Scrape, limit: str) -> float | None:
    return samples.get(f'atp_capacity_refusals_total{{instance="atp:9464", job="atp-service", limit="{limit}"}}')


def _batch(rid: str) -> pb.ReserveStreamRequest:
    return pb.ReserveStreamRequest(reservations=[pb.ReserveRequest(
        reservation_id=rid, lines=[pb.Line(sku="A", location="S1", quantity=1)])])


async def test_reserve_streams_refused_at_max_reserve_streams_fire_the_capacity_alert(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    """An OMS whose ReserveStreams are refused at ``max_reserve_streams`` (RESOURCE_EXHAUSTED,
    CAPACITY_REACHED) reserves nothing through them, and no alert fired: the refusals showed only in
    ``atp_rpc_duration_seconds{code="RESOURCE_EXHAUSTED"}``, which no rule reads."""
    limit = 2
    service, client = await start_service(metrics_port=0, max_reserve_streams=limit)
    await client.record_events([receipt("stock", "A", "S1", 100)])
    before = scrape(service.metrics_port)
    assert refusals(before, "max_reserve_streams") == 0  # there before the first refusal: rate() sees it
    open_calls: list[Any] = []
    for n in range(limit):
        call = client.stub.ReserveStream()
        await call.write(_batch(f"r{n}"))
        assert len((await call.read()).outcomes) == 1
        open_calls.append(call)
    for _ in range(3):
        refused = await refusal(client.stub.ReserveStream(iter(())))
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    after = scrape(service.metrics_port)
    assert refusals(after, "max_reserve_streams") == 3
    assert firing(before, after, tmp_path) == {"ATPReservationsCapacityReached"}
    for call in open_calls:
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF  # type: ignore[attr-defined]


async def test_watchers_refused_at_max_watchers_fire_the_capacity_alert(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    """A channel consumer refused at ``max_watchers`` sees no availability change, and no alert fired."""
    service, client = await start_service(metrics_port=0, max_watchers=1, estate=write_estate(tmp_path))
    before = scrape(service.metrics_port)
    assert refusals(before, "max_watchers") == 0
    first = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="pickup", snapshot=True))
    assert (await first.read()).kind in (pb.WatchAvailabilityResponse.KIND_SNAPSHOT,
                                         pb.WatchAvailabilityResponse.KIND_SNAPSHOT_END)
    for _ in range(3):
        refused = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="pickup"))
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await refused.read()
        assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_watchers" in (ended.value.details() or "")
    after = scrape(service.metrics_port)
    assert refusals(after, "max_watchers") == 3
    assert firing(before, after, tmp_path) == {"ATPReservationsCapacityReached"}
    first.cancel()
