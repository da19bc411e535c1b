"""Channel feeds end to end: real Redis, real gRPC server; time moved by a manual clock (C1-C3, E11)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis.asyncio as aioredis

from atp_client import typed
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from atp_service.tasks import cancel_and_wait
from reservation import ChannelRules, StockStatus, curate
from tests.atp_service.channel_helpers import (
    ESTATE,
    DeskRounds,
    fact,
    latest,
    stream_updates,
    wait_for_updates,
    write_estate,
)
from tests.conftest import ServiceFactory
from tests.waiting import until

T = 1_700_000_000_000


async def test_c1_curated_numbers_per_channel(start_service: ServiceFactory, tmp_path: Path, clock: ManualClock,
                                              redis_url: str) -> None:
    _service, client = await start_service(clock=clock, estate=write_estate(tmp_path))
    await client.record_events([
        fact("c1", "COUNT", "sku-a", "dc-1", 40, T), fact("c2", "COUNT", "sku-a", "store-1", 3, T),
        fact("c3", "COUNT", "sku-a", "store-2", 1, T), fact("c4", "COUNT", "sku-a", "store-3", 9, T),
    ])
    market = await wait_for_updates(redis_url, "market", 1)
    pickup = await wait_for_updates(redis_url, "pickup", 3)
    web = await wait_for_updates(redis_url, "web", 1)
    assert [(u.sku, u.location, u.quantity, u.previous) for u in market] == [("sku-a", "", 38, None)]
    assert {u.location: u.quantity for u in pickup} == {"store-1": 2, "store-2": 0, "store-3": 8}
    assert web[0].quantity == 47  # network total 53, minus ceil(10 % of 53) = 6; under max_shown 50
    assert web[0].quantity == curate(np.array([53]), ChannelRules(buffer_percent=10.0, max_shown=50))[0]
    assert all(u.event_time == T for u in market + pickup + web)  # C3: newest fact behind it


async def test_c2_thousand_changes_in_an_interval_publish_once_and_a_stockout_at_once(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    service, client = await start_service(clock=clock, estate=write_estate(tmp_path))
    assert service.channels is not None
    rounds = DeskRounds(service.channels)
    await client.record_events([fact("base", "COUNT", "sku-a", "dc-1", 5000, T)])
    await wait_for_updates(redis_url, "market", 1)
    for chunk in range(10):
        await client.record_events([fact(f"s{chunk}-{n}", "SALE", "sku-a", "dc-1", 1, T + 1 + chunk * 100 + n)
                                    for n in range(100)])
    await rounds.one_more()  # the sales durable, then a whole round: curated, offered, held back
    assert len(await stream_updates(redis_url, "market")) == 1  # all inside the throttle interval
    clock.advance(1000)
    service.channels.poke()
    updates = await wait_for_updates(redis_url, "market", 2)
    assert [(u.quantity, u.previous) for u in updates[1:]] == [(4000 - 2, 4998)]
    assert updates[1].event_time == T + 1 + 9 * 100 + 99

    await client.record_events([fact("more", "SALE", "sku-a", "dc-1", 10, T + 2000)])  # throttled again
    await client.record_events([fact("zero", "COUNT", "sku-a", "dc-1", 2, T + 2001)])  # 2 - buffer 2 = 0
    updates = await wait_for_updates(redis_url, "market", 3)  # no clock move: the stock-out goes at once
    assert [(u.quantity, u.status) for u in updates[2:]] == [(0, StockStatus.OUT_OF_STOCK)]
    await rounds.one_more()
    assert len(await stream_updates(redis_url, "market")) == 3  # the throttled 3988 was overtaken, never sent


async def test_c2_a_per_location_stockout_is_offered_when_durable_without_waiting_for_curation(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """The desk offers a per-location drop to 0 from the durable entry itself (the position's
    available at or below the channel's zero line), so it goes out with the next write instead of
    after the next curation of every changed SKU."""
    service, client = await start_service(clock=clock, estate=write_estate(tmp_path))
    desk = service.channels
    assert desk is not None and service.ingestor is not None
    await client.record_events([fact("base", "COUNT", "sku-z", "store-1", 5, T)])
    await wait_for_updates(redis_url, "pickup", 1, desk=desk)  # 5 - buffer 1 = 4 shown, the write settled
    await cancel_and_wait(desk._task)  # no more rounds: no curation, no writes
    await client.record_events([fact("sold", "SALE", "sku-z", "store-1", 4, T + 1)])  # 1 left: 1 - 1 = 0
    assert "sku-z" in desk._dirty  # not curated
    taken = desk.feeds["pickup"].take(clock.now_ms(), 10, urgent_only=True)
    assert [(u.sku, u.location, u.quantity, u.previous) for u in taken] == [("sku-z", "store-1", 0, 4)]
    assert service.ingestor._read_count == service.config.ingest_count_publishing  # short turns for the desk


async def test_e11_and_c3_versions_only_increase_across_a_restart(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    estate = write_estate(tmp_path)
    service, client = await start_service(clock=clock, estate=estate)
    await client.record_events([fact(f"c{n}", "COUNT", f"sku-{n}", "dc-1", 10 + n, T) for n in range(20)])
    before = await wait_for_updates(redis_url, "market", 20)
    await client.record_events([fact("s0", "SALE", "sku-0", "dc-1", 1, T + 1)])  # throttled, then the restart
    await service.stop(grace_s=0.1)

    service2, client2 = await start_service(clock=clock, estate=estate)
    assert service2.channels is not None
    clock.advance(1500)
    service2.channels.poke()
    await wait_for_updates(redis_url, "market", 21)
    await DeskRounds(service2.channels).one_more()  # every round since the start ended: nothing more to come
    after = await stream_updates(redis_url, "market")
    assert len(after) == 21  # E11: unchanged keys are not published again after the restart
    assert (after[-1].sku, after[-1].quantity, after[-1].previous) == ("sku-0", 7, 8)
    assert after[-1].version > max(u.version for u in before)
    await client2.record_events([fact("s1", "SALE", "sku-1", "dc-1", 1, T + 2)])
    last = (await wait_for_updates(redis_url, "market", 22))[-1]
    assert last.version > after[-1].version


async def test_watch_snapshot_plus_changes_equals_the_stream(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    service, client = await start_service(clock=clock, estate=write_estate(tmp_path), watch_batch=7)
    await client.record_events([fact(f"c{n}", "COUNT", f"sku-{n}", f"store-{1 + n % 3}", 5 + n, T)
                                for n in range(30)])
    await wait_for_updates(redis_url, "pickup", 30, desk=service.channels)  # published: in the watch's snapshot
    call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="pickup", snapshot=True))
    seen: dict[tuple[str, str], tuple[int, int]] = {}
    kinds = []
    async for message in call:
        kinds.append(message.kind)
        for u in message.updates:
            seen[(u.sku, u.location)] = (u.quantity, u.version)
        if message.kind == pb.WatchAvailabilityResponse.KIND_SNAPSHOT_END:
            break
    assert kinds[0] == pb.WatchAvailabilityResponse.KIND_SNAPSHOT and len(kinds) == 1 + (30 + 6) // 7
    changes = [fact(f"s{n}", "SALE", f"sku-{n}", f"store-{1 + n % 3}", 1, T + 1) for n in range(0, 30, 2)]
    await client.record_events(changes)
    clock.advance(1000)
    assert service.channels is not None
    service.channels.poke()
    stream = await wait_for_updates(redis_url, "pickup", 45)
    async for message in call:
        assert message.kind == pb.WatchAvailabilityResponse.KIND_CHANGES
        for u in message.updates:
            seen[(u.sku, u.location)] = (u.quantity, u.version)
        if message.version >= stream[-1].version:
            break
    call.cancel()
    assert seen == latest(stream)


async def test_watch_tells_a_subscriber_behind_the_trimmed_stream_to_resnapshot(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    _service, client = await start_service(clock=clock, estate=write_estate(tmp_path))
    await client.record_events([fact(f"c{n}", "COUNT", f"sku-{n}", "dc-1", 5 + n, T) for n in range(10)])
    updates = await wait_for_updates(redis_url, "market", 10)
    raw = aioredis.Redis.from_url(redis_url)
    await raw.xtrim("atp:{avail}:market", minid=f"{updates[5].version}-0", approximate=False)
    await raw.aclose()
    call = client.stub.WatchAvailability(
        pb.WatchAvailabilityRequest(channel="market", since_version=updates[2].version))
    messages = [m async for m in call]
    assert [m.kind for m in messages] == [pb.WatchAvailabilityResponse.KIND_RESNAPSHOT_REQUIRED]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="nope")):
            pass
    said = typed(err.value).refusal
    assert (said.code, said.reason) == (grpc.StatusCode.NOT_FOUND, "CHANNEL_NOT_FOUND")
    assert "market, pickup, web" in said.message  # it names the channels there are


async def test_watch_tells_a_subscriber_resuming_past_the_newest_version_to_resnapshot(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """A resume point the stream never reached (one seen on a Redis that lost its newest entries, or
    another keyspace's) cannot be continued exactly: read on from it, the watch waited silently
    until versions passed it, and then skipped every update up to it — a stock-out among them."""
    _service, client = await start_service(clock=clock, estate=write_estate(tmp_path))
    await client.record_events([fact(f"c{n}", "COUNT", f"sku-{n}", "dc-1", 5 + n, T) for n in range(3)])
    updates = await wait_for_updates(redis_url, "market", 3)
    call = client.stub.WatchAvailability(
        pb.WatchAvailabilityRequest(channel="market", since_version=updates[-1].version + 5))
    messages = await asyncio.wait_for(read_all(call), 30)
    assert [m.kind for m in messages] == [pb.WatchAvailabilityResponse.KIND_RESNAPSHOT_REQUIRED]


async def test_a_watch_of_a_channel_a_reload_removed_ends_naming_it(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """A reload that removes a channel while it is watched: a snapshot under way failed UNKNOWN
    (a KeyError, logged as a bug), and a watch of its changes waited for ever on a stream nobody
    writes to any more, the subscriber never told its feed was gone. Both now end NOT_FOUND,
    naming the channel, as a watch of it started after the reload is."""
    estate = write_estate(tmp_path)
    service, client = await start_service(clock=clock, estate=estate, watch_batch=1)
    await client.record_events([fact(f"c{n}", "COUNT", f"sku-{n}", "dc-1", 5 + n, T) for n in range(3)])
    await wait_for_updates(redis_url, "market", 3, desk=service.channels)  # published: in the watch's snapshot
    snapshot = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market", snapshot=True))
    assert (await snapshot.read()).kind == pb.WatchAvailabilityResponse.KIND_SNAPSHOT  # one of three
    changes = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market"))
    await until(lambda: service._servicer._watchers.open == 2, "both watches open", 20)
    start = ESTATE.index("[[channels]]\nname = \"market\"")
    estate.write_text(ESTATE[:start] + ESTATE[ESTATE.index("[[channels]]", start + 1):])
    await client.stub.ReloadEstate(pb.ReloadEstateRequest())
    for call in (snapshot, changes):
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(read_all(call), 30)
        assert ended.value.code() == grpc.StatusCode.NOT_FOUND, ended.value
        assert "unknown channel 'market'" in (ended.value.details() or "")


async def read_all(call: grpc.aio.UnaryStreamCall[pb.WatchAvailabilityRequest, pb.WatchAvailabilityResponse],
                   ) -> list[pb.WatchAvailabilityResponse]:
    messages = []
    while (message := await call.read()) != grpc.aio.EOF:  # type: ignore[attr-defined]
        messages.append(message)
    return messages


async def test_reload_publishes_only_what_changed_and_a_bad_file_changes_nothing(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    path = write_estate(tmp_path)
    service, client = await start_service(clock=clock, estate=path)
    await client.record_events([fact(f"c{n}", "COUNT", f"sku-{n}", "dc-1", q, T)
                                for n, q in enumerate((10, 15, 30, 50))])
    first = await wait_for_updates(redis_url, "market", 4)
    assert sorted(u.quantity for u in first) == [8, 13, 28, 48]

    text = path.read_text()
    path.write_text(text.replace('buffer_units = 2\n', 'buffer_units = 2\nmax_shown = 20\n', 1)
                    + '\n[[channels]]\nname = "outlet"\nsells_from = ["dc-1"]\nthrottle_ms = 0\n')
    reply = await client.stub.ReloadEstate(pb.ReloadEstateRequest())
    assert [c.name for c in reply.channels] == ["market", "outlet", "pickup", "web"]
    clock.advance(1000)  # the market's throttle interval since the baselines
    assert service.channels is not None
    service.channels.poke()
    await wait_for_updates(redis_url, "market", 6)
    outlet = await wait_for_updates(redis_url, "outlet", 4)
    await DeskRounds(service.channels).one_more()  # every round since the reload ended: nothing more to come
    market = await stream_updates(redis_url, "market")
    assert sorted((u.sku, u.quantity, u.previous) for u in market[4:]) == [("sku-2", 20, 28), ("sku-3", 20, 48)]
    assert sorted(u.quantity for u in outlet) == [10, 15, 30, 50]
    pickup_before = len(await stream_updates(redis_url, "pickup"))

    path.write_text(text.replace("buffer_units = 2", "buffer_percent = 200.0", 1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.ReloadEstate(pb.ReloadEstateRequest())
    said = typed(err.value).refusal
    assert (said.code, said.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ESTATE_UNUSABLE")
    assert "channels[0].buffer_percent" in said.message  # the estate file's key, for its author
    await client.record_events([fact("s1", "SALE", "sku-0", "dc-1", 1, T + 5)])
    clock.advance(1000)
    service.channels.poke()
    market = await wait_for_updates(redis_url, "market", 7)
    assert (market[-1].sku, market[-1].quantity) == ("sku-0", 7)  # the old rules still apply
    assert len(await stream_updates(redis_url, "pickup")) == pickup_before


async def test_reload_shows_zero_where_a_channel_no_longer_sells(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    path = write_estate(tmp_path)
    _, client = await start_service(clock=clock, estate=path)
    await client.record_events([fact(f"c{n}", "COUNT", "sku-a", f"store-{n}", 5, T) for n in (1, 2, 3)])
    await wait_for_updates(redis_url, "pickup", 3)
    path.write_text(path.read_text().replace('sells_from = ["stores"]', 'sells_from = ["store-1", "store-2"]'))
    await client.stub.ReloadEstate(pb.ReloadEstateRequest())
    updates = await wait_for_updates(redis_url, "pickup", 4)  # no clock move: a drop to 0 goes at once
    assert [(u.location, u.quantity, u.previous) for u in updates[3:]] == [("store-3", 0, 4)]



async def test_default_safety_stock_per_location_type_protects_store_units(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock) -> None:
    path = write_estate(tmp_path, "[safety_stock]\nstore = 1\n" + ESTATE)
    _, client = await start_service(clock=clock, estate=path)
    await client.record_events([fact("c1", "COUNT", "sku-s", "store-1", 5, T),
                                fact("c2", "COUNT", "sku-s", "dc-1", 5, T)])
    store, dc = await client.availability([("sku-s", "store-1"), ("sku-s", "dc-1")])
    assert (store.safety_stock, store.available) == (1, 4)
    assert (dc.safety_stock, dc.available) == (0, 5)


async def test_a_reload_with_a_count_past_int64_is_refused_and_the_channels_keep_publishing(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """Defect: ``max_shown = 9223372036854775808`` (TOML takes it) was reloaded OK; the desk's next
    round raised OverflowError in C1's arithmetic and the desk task ended: no channel published
    anything more, the stock-out below included, while the service answered as healthy."""
    path = write_estate(tmp_path)
    _, client = await start_service(clock=clock, estate=path)
    await client.record_events([fact("c1", "COUNT", "sku-z", "dc-1", 10, T)])
    await wait_for_updates(redis_url, "market", 1)
    path.write_text(ESTATE.replace("buffer_units = 2\n", "buffer_units = 2\nmax_shown = 9223372036854775808\n", 1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stub.ReloadEstate(pb.ReloadEstateRequest())
    said = typed(err.value).refusal
    assert (said.code, said.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ESTATE_UNUSABLE")
    assert "channels[0].max_shown: must be at most 9223372036854775807" in said.message
    await client.record_events([fact("s1", "SALE", "sku-z", "dc-1", 10, T + 1)])
    assert (await wait_for_updates(redis_url, "market", 2))[-1].quantity == 0  # the stock-out goes out


async def test_every_channel_s_update_counts_are_exported_at_zero_from_the_start(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    """``increase()`` sees nothing of a series' first value: an alert reading a channel's updates
    (ATPChannelWithoutPublisher: updates written, no publisher) missed its first changes."""
    service, _ = await start_service(estate=write_estate(tmp_path))
    assert service.channels is not None
    samples = {(s.labels["channel"], s.labels["kind"]): s.value
               for metric in service.metrics.channels.published.collect() for s in metric.samples
               if s.name.endswith("_total")}
    for channel in service.channels.feeds:
        for kind in ("stockout", "baseline", "change"):
            assert (channel, kind) in samples, (channel, kind)
