"""Values a publisher delivered from versions Redis then lost (restored from older data, a failover to a replica
behind its primary) do not stay at the destination: once the publisher finds the loss (the service's first entry
after its start follows a version below what the publisher read), every key it delivered at a lost version is
published again by the service at a version of its new run — above every lost one, so a destination keeping the
highest version per key takes it (C3) — with its curated value of what is durable: what the restored state holds,
0 for a key the lost entries made (C4)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from atp_client import AtpClient
from atp_service import AtpService, ManualClock
from publishers._restamp import lost_delivered
from reservation import ChannelUpdate, StockStatus
from tests.atp_service.app.test_redis_lost_tail import restored, saved
from tests.atp_service.channel_helpers import fact, wait_for_updates
from tests.conftest import ServiceFactory
from tests.publishers.test_publisher_across_starts import _acknowledged, _delivered, publishing, three_counted, warnings
from tests.waiting import until

T = 1_700_000_000_000


def shown(out: Path) -> dict[str, tuple[int, int]]:
    """sku -> (quantity, version) a destination keeping the highest version per key shows (C3: a lower one dropped)."""
    kept: dict[str, tuple[int, int]] = {}
    if out.exists():
        for line in out.read_text().splitlines(keepends=True):
            if line.endswith("\n"):
                u = json.loads(line)
                if u["version"] > kept.get(u["sku"], (0, 0))[1]:
                    kept[u["sku"]] = (u["quantity"], u["version"])
    return kept



async def lost_delivered_then_stopped(service: AtpService, clock: ManualClock, redis_url: str, out: Path,
                                      direct: aioredis.Redis) -> list[ChannelUpdate]:
    """The entries Redis is to lose (sku-3 = 7 made, sku-0 = 6 changed) published, delivered and acknowledged;
    then the service stopped. The channel's updates so far."""
    clock.advance(1000)  # sku-0's throttle interval
    assert service.channels is not None
    service.channels.poke()
    lost = await wait_for_updates(redis_url, "market", 5)
    await _delivered(out, lost[-1].sku, lost[-1].version)
    await _acknowledged(direct)
    assert {s: shown(out)[s][0] for s in ("sku-0", "sku-3")} == {"sku-0": 6, "sku-3": 7}
    await service.stop(grace_s=0.1)
    return lost


async def lost_after_delivering(service: AtpService, client: AtpClient, clock: ManualClock, redis_url: str, out: Path,
                                direct: aioredis.Redis, first: list[ChannelUpdate]) -> list[ChannelUpdate]:
    """``first`` delivered and acknowledged, Redis's image taken; then entries made (sku-3) and changed (sku-0),
    delivered, the service stopped, and Redis restored from the image: those entries lost. The updates so far."""
    await _delivered(out, first[-1].sku, first[-1].version)
    await _acknowledged(direct)
    image = await saved(direct)
    await client.record_events([fact("c3", "COUNT", "sku-3", "dc-1", 9, T + 1),  # a key the lost entries make
                                fact("r0", "RECEIPT", "sku-0", "dc-1", 3, T + 1)])  # and one they change
    lost = await lost_delivered_then_stopped(service, clock, redis_url, out, direct)
    await restored(direct, image, at_once=True)
    return lost

async def test_values_delivered_from_versions_redis_lost_are_published_again_at_new_versions_C3_C4(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """Defect: after the loss the publisher swept the restored state hash, which holds nothing of a key the lost
    entries made (sku-3: 7 stayed shown, though the service holds no stock of it), and an older version of a key they
    changed (sku-0: its restored 3 is below the 6 delivered, so never delivered, or dropped by the destination): the
    destination kept both lost values until their keys changed again, perhaps never."""
    caplog.set_level(logging.WARNING, logger="publishers")
    estate, out, service, client, first = await three_counted(start_service, tmp_path, clock, redis_url)
    async with publishing(redis_url, out) as direct:
        lost = await lost_after_delivering(service, client, clock, redis_url, out, direct, first)
        service, client = await start_service(clock=clock, estate=estate)
        await client.record_events([fact("t1", "SALE", "sku-1", "dc-1", 6, T + 2)])  # the new run's first entry
        await until(lambda: warnings(caplog), "the loss warned", 20)
        await until(lambda: {s: shown(out).get(s, (0, 0))[0] for s in ("sku-0", "sku-1", "sku-3")}
                    == {"sku-0": 3, "sku-1": 0, "sku-3": 0}, "the durable values shown", 20)
    top = max(u.version for u in lost)
    assert all(shown(out)[s][1] > top for s in ("sku-0", "sku-3")), "published again above every lost version"
    untouched = next(u for u in first if u.sku == "sku-2")
    assert shown(out)["sku-2"] == (5, untouched.version), "a key the loss did not touch is not published again"


async def test_a_channel_none_of_whose_keys_change_after_the_restore_converges_all_the_same_C4(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """Defect: only the new run's first update carried ``follows``, so only it made the publisher name what it had
    delivered at lost versions. A channel none of whose keys changed after the restore wrote nothing: sku-0 kept its
    lost 6 and sku-3, which the service holds nothing of, its lost 7 at the destination, and the loss went unsaid,
    until some key of the channel changed (a quiet channel: perhaps never). Each start now writes a marker first to
    every channel: no update, but it follows the newest version Redis held, and the publisher names from it."""
    caplog.set_level(logging.WARNING, logger="publishers")
    estate, out, service, client, first = await three_counted(start_service, tmp_path, clock, redis_url)
    async with publishing(redis_url, out) as direct:
        lost = await lost_after_delivering(service, client, clock, redis_url, out, direct, first)
        await start_service(clock=clock, estate=estate)  # and nothing changes any key of the channel from here
        await until(lambda: {s: shown(out).get(s, (0, 0))[0] for s in ("sku-0", "sku-3")}
                    == {"sku-0": 3, "sku-3": 0}, "the durable values shown", 30)
        await _acknowledged(direct)  # the marker too: read, not delivered
        dead = await direct.xlen("atp:{avail}:market:dlq:jsonl")
    assert [w for w in warnings(caplog) if "delivered at versions Redis has since lost" in w], warnings(caplog)
    top = max(u.version for u in lost)
    assert all(shown(out)[s][1] > top for s in ("sku-0", "sku-3")), "published again above every lost version"
    untouched = {u.sku: (u.quantity, u.version) for u in first if u.sku in ("sku-1", "sku-2")}
    assert {s: shown(out)[s] for s in untouched} == untouched, "a key the loss did not touch is not published again"
    assert dead == 0, "the marker dead-lettered"
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(u["sku"] for u in lines), "the marker delivered as an update"


async def test_the_loss_is_found_also_where_the_groups_restored_position_is_below_the_link_C3(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """Defect: the loss was found only where the group's restored position was exactly the version the run's first
    entry follows. An image taken while the group was behind (a replica's RDB mid-read) put it below: the publisher
    read the older entries again (they follow on from its restored position), took its own position down to the
    group's, and then crossed the link without a word: sku-3's lost 7 stayed shown for good."""
    estate, out, service, client, first = await three_counted(start_service, tmp_path, clock, redis_url)
    async with publishing(redis_url, out) as direct:
        await _delivered(out, first[-1].sku, first[-1].version)
        await _acknowledged(direct)
        image = await saved(direct)
        await client.record_events([fact("c3", "COUNT", "sku-3", "dc-1", 9, T + 1)])
        lost = (await wait_for_updates(redis_url, "market", 4))[-1]
        await _delivered(out, "sku-3", lost.version)
        await service.stop(grace_s=0.1)
        await restored(direct, image, at_once=True)
        await direct.xgroup_setid("atp:{avail}:market", "jsonl", f"{first[0].version}-0")  # the group was behind
        clock.advance(1000)
        service, client = await start_service(clock=clock, estate=estate)
        await client.record_events([fact("t1", "SALE", "sku-1", "dc-1", 6, T + 2)])
        await until(lambda: shown(out).get("sku-3", (0, 0))[0] == 0, "sku-3's durable 0 shown", 20)
    assert shown(out)["sku-3"][1] > lost.version
    assert shown(out)["sku-1"][0] == 0


def test_a_run_s_first_entry_in_the_middle_of_a_read_finds_what_was_delivered_at_versions_it_says_were_lost() -> None:
    """The read script looks at a read's first entry only; what was delivered at lost versions is found at any entry
    that carries ``follows``, wherever it is in the read."""
    def update(sku: str, version: int, follows: int | None = None) -> ChannelUpdate:
        return ChannelUpdate("market", sku, "", 1, None, StockStatus.LOW_STOCK, version, 0, 0, 0, follows=follows)
    delivered = {"a\t": 10, "b\t": 12, "c\t": 15, "d\t": 2000}
    read = [update("a", 10), update("x", 11), update("e", 2000, follows=11)]
    assert lost_delivered(delivered, read) == {"b\t": 12, "c\t": 15}
    assert lost_delivered(delivered, read[:2]) == {}
