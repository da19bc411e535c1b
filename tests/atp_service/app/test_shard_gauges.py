"""What ``/metrics`` says of the reservations a shard holds (real Redis, the real service and its
metrics endpoint): ``atp_live_reservations{shard}`` (how near ``max_live_reservations_per_shard``
a shard is) follows the holds and confirmations as they are made and ended, not only when a hold
expires or a resolved one is forgotten."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.app.test_processes import SHARDS, group_of, owned
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory, services_on
from tests.ports import held_port
from tests.waiting import until


def scraped(port: int, name: str, shard: str) -> float | None:
    """One series of a scrape of the metrics endpoint (None: not exported)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return next((sample.value for family in text_string_to_metric_families(body) for sample in family.samples
                 if sample.name == name and sample.labels == {"shard": shard}), None)


async def test_the_live_reservations_gauge_counts_holds_and_confirmations_with_nothing_due(
        start_service: ServiceFactory) -> None:
    """Three Reserves, one confirmed and one released, none due to expire (a 15-minute TTL) and
    nothing resolved past its retention: the gauge was set only in a housekeeping turn that expired
    or forgot something, so it was absent — and after that it kept whatever it last read, while
    ``atp_remembered_reservations``, set each second beside it, said 3."""
    service, client = await start_service(shards=1, metrics_port=0)
    await client.record_events([receipt("in", "A", "S1", 100)])
    for rid in ("r1", "r2", "r3"):
        held = await client.reserve(rid, [("A", "S1", 1)], ttl_seconds=900)
        assert held.state == pb.RESERVATION_STATE_HELD
    assert (await client.confirm("r1")).state == pb.RESERVATION_STATE_CONFIRMED
    assert (await client.release("r3")).state == pb.RESERVATION_STATE_RELEASED
    port = service.metrics_port
    # Set each second by housekeeping: a step that ran before the release counted three live, and the
    # three remembered then already; so wait for the count, which was absent (or kept for ever) before.
    await until(lambda: scraped(port, "atp_remembered_reservations", "0") == 3, "three reservations remembered")
    await until(lambda: scraped(port, "atp_live_reservations", "0") == 2, "r1 confirmed and r2 held live")
    assert (await client.release("r2")).state == pb.RESERVATION_STATE_RELEASED
    await until(lambda: scraped(port, "atp_live_reservations", "0") == 1, "r2's release counted: r1 alone is live")


async def test_a_group_handed_over_is_counted_by_its_new_owner_alone(redis_url: str) -> None:
    """``ownership = leases``: a process that handed a group over kept exporting the live reservations
    it last counted there, beside the new owner's count of the same reservations — a sum over the
    processes counted them twice, for as long as the process ran."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=(), metrics_port=0) as start:
        await _hand_over_held_groups(start)


async def _hand_over_held_groups(start: ServiceFactory) -> None:
    first, client = await start(port=held_port(), host="127.0.0.1")
    await until(lambda: owned(first) == set(range(SHARDS)), "the first process owns every group", 60)
    skus = {group_of(sku): sku for sku in (f"k{i}" for i in range(64))}
    for group in range(SHARDS):
        await client.record_events([receipt(f"in-{group}", skus[group], "DC", 10)])
        await client.reserve(f"long-{group}", [(skus[group], "DC", 1)], ttl_seconds=900)
        await client.reserve(f"short-{group}", [(skus[group], "DC", 1)], ttl_seconds=1)
    await until(lambda: all(scraped(first.metrics_port, "atp_live_reservations", str(group)) == 1
                            for group in range(SHARDS)), "each short hold expired, the long one counted")
    second, _ = await start(port=held_port(), host="127.0.0.1")
    await until(lambda: owned(second) and owned(first) | owned(second) == set(range(SHARDS))
                and not owned(first) & owned(second), "groups handed over to the second process", 60)
    moved = owned(second)
    await until(lambda: all(scraped(second.metrics_port, "atp_live_reservations", str(g)) == 1 for g in moved),
                "the new owner counts the long holds of its groups")
    await until(lambda: all(scraped(first.metrics_port, "atp_live_reservations", str(g)) == 0 for g in moved),
                "the process that handed them over counts none there")
