"""C3: a published value carries the time of the newest fact behind it, also when a round curates a SKU marked
whole (a block of counts, ``LoadCounts``) and at a location (a fact) alike: real Redis, real gRPC server."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atp_service import ManualClock
from reservation import CountRows
from tests.atp_service.channel_helpers import fact, one_dc_market, wait_for_updates, write_estate
from tests.atp_service.channels.test_stockout_between_slices import WatchedRound
from tests.conftest import ServiceFactory
from tests.waiting import until

T = 1_700_000_000_000


async def test_c3_a_network_value_after_a_block_of_counts_and_a_later_sale_carries_the_sales_time(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """A SKU a block of counts marked whole (the row's time: the count's) and a sale marked at its location, 5 s
    later, both before the round: the network channel's value was stamped with the row's time, the count's, though
    the newer sale is behind it too (its time was taken only where no row time was noted)."""
    service, client = await start_service(clock=clock, estate=write_estate(tmp_path, one_dc_market(0, 1000.0)))
    desk = service.channels
    assert desk is not None and service.desk is not None
    watched = WatchedRound(desk)  # the next round waits until both are marked
    one = np.zeros(1, dtype=np.uint32)
    await service.desk.load_counts(CountRows("erp", ["sku-b"], ["dc-1"], one, one, np.full(1, 20, dtype=np.int64),
                                             np.full(1, T, dtype=np.int64)), "test")
    await client.record_events([fact("sale-b", "SALE", "sku-b", "dc-1", 1, T + 5000)])
    await until(lambda: desk._dirty.get("sku-b", {}).keys() == {"", "dc-1"}, "sku-b marked whole and at dc-1")
    watched.start()
    (update,) = await wait_for_updates(redis_url, "market", 1)
    assert (update.sku, update.quantity, update.event_time) == ("sku-b", 19, T + 5000)


TWO_STORES = ('[[locations]]\nids = ["store-1", "store-2"]\ntype = "store"\n\n[[channels]]\nname = "pickup"\n'
              'sells_from = ["store-1", "store-2"]\nper_location = true\nthrottle_ms = 0\nrate_limit_per_s = 1000.0\n')


async def test_c3_a_per_location_value_at_a_location_the_block_did_not_count_carries_its_own_facts_time(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """A block of counts making sku-b's position at store-1 (counted 10 s later) and a sale at store-2, in one round:
    store-2's value was stamped with the block's time, newer than every fact behind it (store-1's count is not), and
    its next value, stamped with its own next fact, went back in time."""
    service, client = await start_service(clock=clock, estate=write_estate(tmp_path, TWO_STORES))
    desk = service.channels
    assert desk is not None and service.desk is not None
    await client.record_events([fact("rcv-b", "RECEIPT", "sku-b", "store-2", 10, T)])
    assert [(u.location, u.quantity, u.event_time) for u in await wait_for_updates(redis_url, "pickup", 1)] == [
        ("store-2", 10, T)]
    watched = WatchedRound(desk)  # the next round waits until both are marked
    one = np.zeros(1, dtype=np.uint32)
    await service.desk.load_counts(CountRows("erp", ["sku-b"], ["store-1"], one, one, np.full(1, 20, dtype=np.int64),
                                             np.full(1, T + 10_000, dtype=np.int64)), "test")
    await client.record_events([fact("sale-b", "SALE", "sku-b", "store-2", 1, T + 5000)])
    await until(lambda: desk._dirty.get("sku-b", {}).keys() == {"", "store-2"}, "sku-b marked whole and at store-2")
    watched.start()
    updates = await wait_for_updates(redis_url, "pickup", 3)
    assert {(u.location, u.quantity, u.event_time) for u in updates[1:]} == {
        ("store-1", 20, T + 10_000), ("store-2", 9, T + 5000)}


async def test_c3_a_value_curated_from_a_block_of_counts_carries_its_own_skus_count_time(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """One block counting sku-a at T and sku-b 10 s later: sku-a's value was stamped with the block's newest time,
    sku-b's count, a fact not behind sku-a's value at all."""
    service, _client = await start_service(clock=clock, estate=write_estate(tmp_path, one_dc_market(0, 1000.0)))
    assert service.desk is not None and service.channels is not None
    place = service.channels.engine.place
    sku_b = next(f"sku-{i}" for i in range(100) if place(f"sku-{i}") == place("sku-a"))  # one shard: one event
    await service.desk.load_counts(CountRows(
        "erp", ["sku-a", sku_b], ["dc-1"], np.arange(2, dtype=np.uint32), np.zeros(2, dtype=np.uint32),
        np.full(2, 20, dtype=np.int64), np.array([T, T + 10_000], dtype=np.int64)), "test")
    updates = await wait_for_updates(redis_url, "market", 2)
    assert {(u.sku, u.event_time) for u in updates} == {("sku-a", T), (sku_b, T + 10_000)}
