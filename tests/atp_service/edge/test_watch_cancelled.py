"""WatchAvailability calls cancelled by their callers at each await of the watch, over and over, against the real
gRPC server and Redis: at once, in the middle of a snapshot (the server blocked writing it, or between chunks),
between SNAPSHOT_END and the first CHANGES (its read of the stream blocked in Redis), resumed from a version,
and by a deadline. No place of ``max_watchers`` (nor a snapshot's keys of ``max_watch_snapshot_keys``) is kept,
and no task is left running: a watcher opened after all that is served, up to the limit exactly."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from atp_service.channels.feeds import VERSIONS_PER_MS
from tests.atp_service.channel_helpers import fact, write_estate
from tests.conftest import ServiceFactory
from tests.waiting import until

T = 1_700_000_000_000
LIMIT = 2
SKUS = 200  # x 3 stores: 600 keys of pickup, each its own SNAPSHOT message (watch_batch 1)
ROUNDS = 4
Kind = pb.WatchAvailabilityResponse


async def _open(client: AtpClient, way: str) -> Any:
    since = T * VERSIONS_PER_MS  # the start's first version (C3: its clock's floor), in the stream
    request = pb.WatchAvailabilityRequest(channel="pickup", snapshot=way != "since", since_version=since)
    call = client.stub.WatchAvailability(request, timeout=3.0 if way == "deadline" else None)
    if way == "snapshot":
        assert (await call.read()).kind == Kind.KIND_SNAPSHOT
    elif way in ("end", "deadline"):
        while (await call.read()).kind != Kind.KIND_SNAPSHOT_END:
            pass
    return call


async def test_watches_cancelled_at_every_await_give_their_places_back(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock) -> None:
    service, client = await start_service(clock=clock, estate=write_estate(tmp_path), max_watchers=LIMIT,
                                          watch_batch=1, input_streams=())
    await client.record_events([fact(f"c{n}-{s}", "COUNT", f"sku-{n}", f"store-{s}", 10, T)
                                for n in range(SKUS) for s in (1, 2, 3)])
    desk = service.channels
    assert desk is not None
    await until(lambda: len(desk.feeds["pickup"].published) == SKUS * 3 and not desk.feeds["pickup"].in_flight,
                "every key of pickup published", 60)
    watchers = service._servicer._watchers
    tasks_before = len(asyncio.all_tasks())
    for n in range(ROUNDS):
        for way in ("at-once", "snapshot", "end", "since", "deadline")[:None if n < 1 else -1]:  # 3 s a deadline
            calls = [await _open(client, way) for _ in range(LIMIT)]
            if way == "since":
                await until(lambda: watchers.open == LIMIT, "both watches from a version open")
            if way == "deadline":
                for call in calls:
                    with pytest.raises(grpc.aio.AioRpcError) as ended:
                        while True:
                            await call.read()
                    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            for call in calls:
                call.cancel()
            await until(lambda: watchers.open == 0 and watchers.held_keys == 0,
                        f"round {n}: the watches cancelled ({way}) gave their places back", 20)
    await until(lambda: len(asyncio.all_tasks()) <= tasks_before, "no task of a cancelled watch left running", 20)
    calls = [await _open(client, "end") for _ in range(LIMIT)]  # the limit, exactly: every place was given back
    refused = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="pickup"))
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await refused.read()
    assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for call in calls:
        call.cancel()
