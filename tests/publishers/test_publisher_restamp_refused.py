"""A channel's ``restamp`` key holding another type than a hash (an operator's mistake, a restore of other data) does
not stop a publisher's delivery: naming the keys it delivered at versions Redis lost is an aid to C4 after a loss,
not a step of delivery. The names are kept and written once the key takes them; the refusal is warned, naming the
key and its type, and counted. Real service, real redis-server, the real publisher."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from atp_service import ManualClock
from publishers import PublisherMetrics
from tests.atp_service.channel_helpers import fact
from tests.conftest import ServiceFactory
from tests.publishers.test_publisher_across_starts import (
    _acknowledged,
    publishing,
    three_counted,
    warnings,
)
from tests.publishers.test_publisher_redis_lost import lost_after_delivering, shown
from tests.waiting import until

T = 1_700_000_000_000
RESTAMP = "atp:{avail}:market:restamp"


def _sample(metrics: PublisherMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name, {"channel": "market"})
    assert value is not None, name
    return value


async def test_a_restamp_key_of_another_type_does_not_stop_delivery_and_the_names_follow_once_it_is_removed_C4(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """Defect: the naming script failed WRONGTYPE, which the publisher took for Redis away: it read its pending entries
    again, failed again at the same entry, and delivered nothing more to that destination, for good."""
    caplog.set_level(logging.WARNING, logger="publishers")
    metrics = PublisherMetrics()
    estate, out, service, client, first = await three_counted(start_service, tmp_path, clock, redis_url)
    async with publishing(redis_url, out, metrics, redis_retry_s=0.2) as direct:
        await lost_after_delivering(service, client, clock, redis_url, out, direct, first)
        await direct.set(RESTAMP, "not a hash")  # the operator's mistake
        service, client = await start_service(clock=clock, estate=estate)
        await client.record_events([fact("t1", "SALE", "sku-1", "dc-1", 6, T + 2)])  # the new run's first entry

        await until(lambda: shown(out).get("sku-1", (0, 0))[0] == 0, "sku-1's stock-out delivered past the refusal", 20)
        await _acknowledged(direct)
        await until(lambda: _sample(metrics, "atp_publisher_restamp_refused_total") >= 1, "the refusal counted", 20)
        assert _sample(metrics, "atp_publisher_restamp_owed_keys") == 2  # sku-0 and sku-3, kept
        assert any(RESTAMP in said and "string" in said for said in warnings(caplog)), warnings(caplog)
        assert {s: shown(out)[s][0] for s in ("sku-0", "sku-3")} == {"sku-0": 6, "sku-3": 7}, "not named yet"

        await direct.delete(RESTAMP)  # the operator's fix: the names kept are written, no restart, no new loss
        await until(lambda: {s: shown(out).get(s, (0, 0))[0] for s in ("sku-0", "sku-3")} == {"sku-0": 3, "sku-3": 0},
                    "the durable values shown", 20)
        assert _sample(metrics, "atp_publisher_restamp_owed_keys") == 0


async def test_a_restamp_value_naming_no_version_is_named_over_and_delivery_goes_on_C4(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """Defect: a field of the ``restamp`` hash holding no number (an operator's edit, a restore of other data) made the
    naming script fail (``tonumber`` of it nil); the publisher took the error for Redis away and read its entries again,
    failing at the same step for good: nothing more delivered, stock-outs included. Such a value names nothing the
    service can read (``ChannelStore.restamps`` skips it), so the publisher's name replaces it."""
    estate, out, service, client, first = await three_counted(start_service, tmp_path, clock, redis_url)
    async with publishing(redis_url, out, redis_retry_s=0.2) as direct:
        await lost_after_delivering(service, client, clock, redis_url, out, direct, first)
        await direct.hset(RESTAMP, "sku-3\t", "not a version")
        service, client = await start_service(clock=clock, estate=estate)
        await client.record_events([fact("t1", "SALE", "sku-1", "dc-1", 6, T + 2)])  # the new run's first entry

        await until(lambda: shown(out).get("sku-1", (0, 0))[0] == 0, "sku-1's stock-out delivered", 20)
        await until(lambda: {s: shown(out).get(s, (0, 0))[0] for s in ("sku-0", "sku-3")} == {"sku-0": 3, "sku-3": 0},
                    "the durable values shown, sku-3's name written over the value naming no version", 20)
