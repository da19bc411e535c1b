"""WatchAvailability ``since_version=V`` at its edges (docs/CHANNELS.md "WatchAvailability"), against the real
service and Redis: V above the newest version the stream holds, V trimmed away, V at (or just before) a hole of
lost versions. Each answer is the documented one: a single RESNAPSHOT_REQUIRED, then the stream ends OK; or
the changes after V, in order, without a gap."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as aioredis

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.channel_helpers import fact, wait_for_updates, write_estate
from tests.atp_service.channels.test_watch_lost_entries import (
    STREAM,
    _lose_entries_after,
    relinked_for_a_write_past_the_hole,
)
from tests.conftest import ServiceFactory

T = 1_700_000_000_000
Kind = pb.WatchAvailabilityResponse


async def _answer(client: AtpClient, since: int) -> list[pb.WatchAvailabilityResponse]:
    """What a watch from ``since`` is told before it ends, or up to its first CHANGES (then cancelled)."""
    call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market", since_version=since))
    told: list[pb.WatchAvailabilityResponse] = []
    while True:
        message: Any = await asyncio.wait_for(call.read(), 30)
        if message is grpc.aio.EOF:
            assert await call.code() == grpc.StatusCode.OK
            return told
        told.append(message)
        if message.kind == Kind.KIND_CHANGES:
            call.cancel()
            return told


async def _ten_published(start_service: ServiceFactory, tmp_path: Path, clock: ManualClock,
                         redis_url: str) -> tuple[AtpClient, list[int]]:
    _service, client = await start_service(clock=clock, estate=write_estate(tmp_path), input_streams=())
    await client.record_events([fact(f"c{n}", "COUNT", f"sku-{n}", "dc-1", 5 + n, T) for n in range(10)])
    return client, [u.version for u in await wait_for_updates(redis_url, "market", 10)]


async def test_since_above_the_newest_version_is_told_to_resnapshot_once(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    client, versions = await _ten_published(start_service, tmp_path, clock, redis_url)
    told = await _answer(client, versions[-1] + 1)
    assert [(m.kind, m.version) for m in told] == [(Kind.KIND_RESNAPSHOT_REQUIRED, versions[-1] + 1)]


async def test_since_trimmed_away_is_told_to_resnapshot_and_since_just_before_the_oldest_goes_on(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    client, versions = await _ten_published(start_service, tmp_path, clock, redis_url)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await raw.xtrim(STREAM, maxlen=3, approximate=False)  # the oldest left: versions[7]
    finally:
        await raw.aclose()
    told = await _answer(client, versions[5])  # versions[6] trimmed away
    assert [m.kind for m in told] == [Kind.KIND_RESNAPSHOT_REQUIRED]
    told = await _answer(client, versions[6])  # the oldest left follows on from it
    assert [m.kind for m in told] == [Kind.KIND_CHANGES]
    assert [u.version for u in told[0].updates] == versions[7:]


async def test_since_at_a_hole_of_lost_versions(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock, redis_url: str) -> None:
    """Redis lost versions[5:] (the desk holds them); V at each place around the hole: before it, in it, at its
    last version. Then a stock-out falls due: the desk writes nothing above the hole, reads the channel again, and
    follows on from the newest version Redis holds (its state hash: versions[9]); the same places are asked again."""
    service, client = await start_service(clock=clock, estate=write_estate(tmp_path), input_streams=())
    await client.record_events([fact(f"c{n}", "COUNT", f"sku-{n}", "dc-1", 5 + n, T) for n in range(10)])
    versions = [u.version for u in await wait_for_updates(redis_url, "market", 10)]
    await _lose_entries_after(redis_url, versions[4])
    for since in (versions[5], versions[9]):  # above the stream's newest (versions[4]) now
        told = await _answer(client, since)
        assert [m.kind for m in told] == [Kind.KIND_RESNAPSHOT_REQUIRED], since
    top = (await relinked_for_a_write_past_the_hole(service, client, redis_url, versions[4]))[-1].version  # sku-9's
    assert top > versions[-1]
    for since in (versions[4], versions[5], versions[8]):  # each before a lost version: never skipped in silence
        told = await _answer(client, since)
        assert [m.kind for m in told] == [Kind.KIND_RESNAPSHOT_REQUIRED], since
    told = await _answer(client, versions[9])  # saw the whole hole before it was lost: the marker follows on from it
    assert [(m.kind, [u.version for u in m.updates]) for m in told] == [(Kind.KIND_CHANGES, [top])]
    told = await _answer(client, top + 1)
    assert [m.kind for m in told] == [Kind.KIND_RESNAPSHOT_REQUIRED]
