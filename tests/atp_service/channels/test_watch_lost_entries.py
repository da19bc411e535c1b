"""WatchAvailability over a Redis that lost the newest entries of a channel stream (a failover to a
replica behind its primary, a restart that lost its last second): the desk still holds what it
published, but writes nothing above the hole — it reads every channel again from what Redis holds, the
service serving on, and links its versions there (``ChannelDesk._relink``). A subscriber that saw some of
the lost versions must be told to re-snapshot, never be fed what follows as if nothing was missing (a
stock-out among the lost versions would stay unknown to it, C3)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, ManualClock
from atp_service.storage.channel_wire import StartMarker
from reservation import ChannelUpdate
from tests.atp_service.app.test_redis_lost_tail import restored, saved
from tests.atp_service.channel_helpers import fact, stream_entries, wait_for_updates, write_estate
from tests.conftest import ServiceFactory
from tests.waiting import until

T = 1_700_000_000_000
STREAM = "atp:{avail}:market"
Kind = pb.WatchAvailabilityResponse


async def _lose_entries_after(redis_url: str, version: int) -> None:
    """The stream as a Redis that never got the entries above ``version`` holds it."""
    raw = aioredis.Redis.from_url(redis_url)
    try:
        kept: list[tuple[Any, Any]] = await raw.xrange(STREAM, max=f"{version}-0") or []
        await raw.delete(STREAM)
        for entry_id, fields in kept:
            await raw.xadd(STREAM, fields, id=entry_id)
    finally:
        await raw.aclose()


async def _first_message(call: object) -> pb.WatchAvailabilityResponse:
    message = await asyncio.wait_for(call.read(), 30)  # type: ignore[attr-defined]
    assert isinstance(message, pb.WatchAvailabilityResponse)
    return message


async def _lost_under_the_desk(start_service: ServiceFactory, tmp_path: Path, clock: ManualClock,
                               redis_url: str) -> tuple[AtpService, AtpClient, list[ChannelUpdate]]:
    """Ten keys published, then the stream's newest five lost (the desk holds them): the service, its client and the
    ten updates. The state hash keeps every value, as does the log."""
    service, client = await start_service(clock=clock, estate=write_estate(tmp_path))
    await client.record_events([fact(f"c{n}", "COUNT", f"sku-{n}", "dc-1", 5 + n, T) for n in range(10)])
    updates = await wait_for_updates(redis_url, "market", 10, desk=service.channels)  # published: the snapshot's
    await _lose_entries_after(redis_url, updates[4].version)
    return service, client, updates


async def relinked_for_a_write_past_the_hole(service: AtpService, client: AtpClient, redis_url: str,
                                             kept: int) -> list[ChannelUpdate]:
    """A stock-out recorded (sku-9), due above the hole: the desk writes nothing past versions Redis lost (it would
    hide them from the next marker, C4); it reads the channel again from what Redis holds (its state hash: every
    value) and writes a marker following that first, then the stock-out. The service serves on. The entries above
    ``kept`` are returned."""
    await client.record_events([fact("s9", "SALE", "sku-9", "dc-1", 14, T + 1)])
    above: list[ChannelUpdate] = []

    async def written() -> bool:
        above[:] = [u for u in await stream_entries(redis_url, "market") if u.version > kept]
        return any(not isinstance(u, StartMarker) for u in above) or service.failed.is_set()
    await until(written, "the stock-out written past the relink's marker")
    assert not service.failed.is_set(), "the service stopped for the channel's loss"
    assert isinstance(above[0], StartMarker), f"written past the hole: {above}"
    return above


async def test_a_subscriber_past_a_hole_of_lost_versions_is_told_to_resnapshot_C3(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    service, client, updates = await _lost_under_the_desk(start_service, tmp_path, clock, redis_url)
    seen = updates[7].version  # the subscriber saw up to here; Redis lost the last five
    marker, after = await relinked_for_a_write_past_the_hole(service, client, redis_url, updates[4].version)
    assert isinstance(marker, StartMarker) and marker.follows == updates[-1].version  # the state hash's newest
    assert after.sku == "sku-9" and after.quantity == 0 and after.version > updates[-1].version
    call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market", since_version=seen))
    message = await _first_message(call)
    call.cancel()
    assert message.kind == Kind.KIND_RESNAPSHOT_REQUIRED, message


async def test_a_snapshot_taken_while_the_stream_lost_its_newest_entries_is_followed_by_changes_C3(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """The snapshot comes from what the desk published, the lost versions included. It was told to re-snapshot
    instead, again after every snapshot, for as long as the channel stayed quiet — every subscriber of it re-reading
    every key in a loop. At the desk's next write it reads the channel again (it writes nothing past versions Redis
    lost); the state hash holds the values the snapshot showed, so its marker follows on from its version."""
    service, client, updates = await _lost_under_the_desk(start_service, tmp_path, clock, redis_url)
    call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market", snapshot=True))
    snapshot: dict[str, int] = {}
    while (message := await _first_message(call)).kind == Kind.KIND_SNAPSHOT:
        snapshot.update((u.sku, u.quantity) for u in message.updates)
    call.cancel()
    assert message.kind == Kind.KIND_SNAPSHOT_END and message.version == updates[-1].version
    assert snapshot == {u.sku: u.quantity for u in updates}  # the lost values too
    await relinked_for_a_write_past_the_hole(service, client, redis_url, updates[4].version)
    call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market", since_version=message.version))
    changes = await _first_message(call)
    call.cancel()
    assert changes.kind == Kind.KIND_CHANGES, changes
    assert [(u.sku, u.quantity) for u in changes.updates] == [("sku-9", 0)]
    assert changes.updates[0].version > updates[-1].version


async def test_versions_a_restart_on_older_data_hands_out_are_new_and_a_subscriber_past_them_resnapshots_C3(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """Defect: Redis back from older data (a restart from an older AOF or RDB, a failover to a lagging replica)
    and the service restarted on it, the desk's versions went on above the newest Redis held — versions it had
    handed out before, now with other values. A subscriber that had seen one of the lost ones resumed, was fed
    the new ones as if they followed on, and kept the lost stock-out (or any lost value) for good. Now each
    start's versions begin above any handed out before (the clock's floor): the subscriber is told to
    re-snapshot, one at exactly the newest Redis held goes on across the jump, and the new versions are above
    every old one (C3)."""
    estate = write_estate(tmp_path)
    service, client = await start_service(clock=clock, estate=estate)
    await client.record_events([fact(f"c{n}", "COUNT", f"sku-{n}", "dc-1", 5 + n, T) for n in range(10)])
    kept = (await wait_for_updates(redis_url, "market", 10))[-1].version
    direct = aioredis.Redis.from_url(redis_url)
    try:
        image = await saved(direct)
        await client.record_events([fact(f"s{n}", "SALE", f"sku-{n}", "dc-1", 5 + n, T + 1) for n in (3, 4)])
        lost = (await wait_for_updates(redis_url, "market", 12))[-2:]
        await service.stop(grace_s=0.1)
        await restored(direct, image)  # the two stock-outs are gone, the facts behind them too
    finally:
        await direct.aclose()
    clock.advance(1000)  # the restart takes a second
    service, client = await start_service(clock=clock, estate=estate)
    await client.record_events([fact(f"t{n}", "SALE", f"sku-{n}", "dc-1", 5 + n, T + 2) for n in (5, 6)])
    new = (await wait_for_updates(redis_url, "market", 12, desk=service.channels))[-2:]  # published: both watched
    past = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market", since_version=lost[0].version))
    at_kept = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market", since_version=kept))
    message, across = await _first_message(past), await _first_message(at_kept)
    past.cancel()
    at_kept.cancel()
    assert message.kind == Kind.KIND_RESNAPSHOT_REQUIRED, message
    assert across.kind == Kind.KIND_CHANGES, across
    assert [(u.sku, u.quantity, u.version) for u in across.updates] == [(u.sku, 0, u.version) for u in new]
    assert min(u.version for u in new) > max(u.version for u in lost)  # never a version handed out before


async def test_a_watch_behind_two_starts_goes_on_across_both_jumps_C3(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """Defect: a start's jump was crossed through a link only the run that made it held in memory: after a second
    restart, a subscriber behind the first jump was told RESNAPSHOT_REQUIRED though nothing was lost. Each start's
    first entry now says in the stream which version it follows, for every later run to read."""
    estate = write_estate(tmp_path)
    service, client = await start_service(clock=clock, estate=estate)
    await client.record_events([fact(f"c{n}", "COUNT", f"sku-{n}", "dc-1", 5 + n, T) for n in range(3)])
    seen = (await wait_for_updates(redis_url, "market", 3))[-1].version
    for n in (1, 2):
        await service.stop(grace_s=0.1)
        clock.advance(1000)  # each restart takes a second
        service, client = await start_service(clock=clock, estate=estate)
        await client.record_events([fact(f"s{n}", "SALE", f"sku-{n}", "dc-1", 5 + n, T + n)])  # a stock-out
        await wait_for_updates(redis_url, "market", 3 + n)
    new = (await wait_for_updates(redis_url, "market", 5))[3:]
    markers = [e for e in await stream_entries(redis_url, "market") if isinstance(e, StartMarker)]
    assert [m.follows for m in markers[1:]] == [seen, new[0].version]  # each start's first entry, linked
    assert [m.version + 1 for m in markers[1:]] == [u.version for u in new]  # its updates follow on from it
    call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market", since_version=seen))
    got: list[tuple[str, int, int]] = []
    while len(got) < len(new):
        message = await _first_message(call)
        assert message.kind == Kind.KIND_CHANGES, message
        got += [(u.sku, u.quantity, u.version) for u in message.updates]
    call.cancel()
    assert got == [(u.sku, 0, u.version) for u in new]
