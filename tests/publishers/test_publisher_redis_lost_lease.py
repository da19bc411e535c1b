"""Redis restored from data older than the publisher's lease (an RDB written before it, or more than ``lease_s``
ago: the lease's expiry has passed, so the restored Redis holds none): the publisher's renewal finds no lease, it
goes standby and takes the lease again at once. What it delivered at versions Redis lost must survive that, or it
neither names those keys to the service (C4: their lost values stay at the destination) nor skips the restored
entries below them (C3: it delivers a key at a version below one it delivered)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from atp_service import ManualClock
from tests.atp_service.app.test_redis_lost_tail import restored, saved
from tests.atp_service.channel_helpers import fact, wait_for_updates
from tests.conftest import ServiceFactory
from tests.publishers.test_publisher_across_starts import _delivered, three_counted
from tests.publishers.test_publisher_across_starts import publishing as publishing_to
from tests.publishers.test_publisher_redis_lost import lost_delivered_then_stopped, shown
from tests.waiting import until

T = 1_700_000_000_000


def lease_lost(caplog: pytest.LogCaptureFixture) -> bool:
    return any("lost the delivery lease" in r.getMessage() for r in caplog.records)


def lower_after_higher(out: Path) -> list[tuple[str, int, int]]:
    """(sku, version, a version delivered before it that is higher): what a publisher must never deliver (C3)."""
    newest: dict[str, int] = {}
    found = []
    for line in out.read_text().splitlines():
        u = json.loads(line)
        if u["version"] <= newest.get(u["sku"], 0):
            found.append((u["sku"], u["version"], newest[u["sku"]]))
        newest[u["sku"]] = max(u["version"], newest.get(u["sku"], 0))
    return found


@contextlib.asynccontextmanager
async def publishing(redis_url: str, out: Path) -> AsyncIterator[aioredis.Redis]:
    """A publisher of ``market`` (group ``jsonl``) with a short lease (renewed every 0.3 s)."""
    async with publishing_to(redis_url, out, lease_s=0.9, send_timeout_s=0.3) as direct:
        yield direct


async def test_what_was_delivered_at_lost_versions_survives_the_lease_the_restore_took_away_C3_C4(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """Defect: taking the lease again read the delivered versions from the restored Redis in place of what this
    publisher knew it had delivered: it read the restored entries of sku-0 again and delivered the one below the
    lost version it had delivered (C3), and at the new run's first entry it named nothing (C4: sku-0 kept its lost
    6 and sku-3, which the service holds nothing of, its lost 7)."""
    caplog.set_level(logging.WARNING, logger="publishers")
    estate, out, service, client, _ = await three_counted(start_service, tmp_path, clock, redis_url)
    direct = aioredis.Redis.from_url(redis_url)
    image = await saved(direct)  # a backup taken before the publisher ran: no lease, no group in it
    await direct.aclose()
    async with publishing(redis_url, out) as direct:
        first = await wait_for_updates(redis_url, "market", 3)
        await _delivered(out, first[-1].sku, first[-1].version)
        await client.record_events([fact("c3", "COUNT", "sku-3", "dc-1", 9, T + 1),  # a key the lost entries make
                                    fact("r0", "RECEIPT", "sku-0", "dc-1", 3, T + 1)])  # and one they change
        lost = await lost_delivered_then_stopped(service, clock, redis_url, out, direct)
        await restored(direct, image, at_once=True)
        await until(lambda: lease_lost(caplog), "the lease the restore took away found lost", 10)
        service, client = await start_service(clock=clock, estate=estate)
        await client.record_events([fact("t1", "SALE", "sku-1", "dc-1", 6, T + 2)])  # the new run's first entry
        await until(lambda: shown(out).get("sku-1", (1, 0))[0] == 0, "the new run's first entry delivered", 20)
        with contextlib.suppress(AssertionError):
            await until(lambda: {s: shown(out).get(s, (0, 0))[0] for s in ("sku-0", "sku-3")}
                        == {"sku-0": 3, "sku-3": 0}, "the durable values shown", 5)
    assert lower_after_higher(out) == [], "C3: delivered at a version below one delivered"
    assert {s: shown(out)[s][0] for s in ("sku-0", "sku-1", "sku-3")} == {"sku-0": 3, "sku-1": 0, "sku-3": 0}
    top = max(u.version for u in lost)
    assert all(shown(out)[s][1] > top for s in ("sku-0", "sku-3")), "published again above every lost version"
