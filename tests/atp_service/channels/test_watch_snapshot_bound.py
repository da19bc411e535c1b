"""WatchAvailability snapshots hold a copy of their channel's values until their last chunk is sent:
``max_watch_snapshot_keys`` bounds what all of them hold at once (a subscriber that reads slowly or
never held its copy for as long as it stayed connected). Real service, real Redis and gRPC; the held
snapshot is one the servicer's own ``Watchers`` is part-way through."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from atp_client import typed
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.channel_helpers import fact, wait_for_updates, write_estate
from tests.conftest import ServiceFactory

T = 1_700_000_000_000
END = pb.WatchAvailabilityResponse.KIND_SNAPSHOT_END


async def snapshot_to_end(call: grpc.aio.UnaryStreamCall) -> int:  # type: ignore[type-arg]
    keys = 0
    while (message := await asyncio.wait_for(call.read(), 10)).kind != END:
        keys += len(message.updates)
    return keys


async def test_snapshots_past_the_bound_are_refused_naming_it_until_one_ends(
        start_service: ServiceFactory, tmp_path: Path, redis_url: str) -> None:
    service, client = await start_service(clock=ManualClock(T), estate=write_estate(tmp_path),
                                          max_watch_snapshot_keys=3, watch_batch=1)
    await client.record_events([fact(f"c{i}", "COUNT", sku, loc, 40, T)
                                for i, (sku, loc) in enumerate([("sku-a", "store-1"), ("sku-a", "store-2"),
                                                                ("sku-b", "store-1"), ("sku-b", "store-2")])])
    await wait_for_updates(redis_url, "pickup", 4, desk=service.channels)  # published: the snapshot's keys
    channels, watchers = service.channels, service._servicer._watchers
    assert channels is not None
    keys = len(channels.feeds["pickup"].published)
    # One alone always goes, however many keys: a channel larger than the bound is still served.
    held = watchers.watch(channels, pb.WatchAvailabilityRequest(channel="pickup", snapshot=True))
    await held.__anext__()  # its first chunk sent: the rest waits for a subscriber who does not read
    assert watchers.held_keys == keys == 4  # past the bound (3)
    refused = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="pickup", snapshot=True))
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await refused.read()
    said = typed(ended.value).refusal
    assert (said.code, said.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "CAPACITY_REACHED")
    assert "max_watch_snapshot_keys" in (ended.value.details() or "")
    # A watch from a version holds no copy: it is not refused.
    changes = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="pickup"))
    await held.aclose()  # the subscriber gone: its copy let go
    assert watchers.held_keys == 0
    served = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="pickup", snapshot=True))
    assert await snapshot_to_end(served) == keys
    assert watchers.held_keys == 0  # let go at its end, though the watch follows the changes on
    served.cancel()
    changes.cancel()
