"""The service's graceful stop with many WatchAvailability streams open and one caller that stopped reading a
snapshot, against the real gRPC server and Redis: every watch that reads ends UNAVAILABLE SHUTTING_DOWN (resume from
the last version seen), and the stop ends then, cutting the one that does not read (UNAVAILABLE, counted in
``atp_streams_cut_at_stop_total``) once no write of its has completed for ``shutdown_stall_s`` — without waiting out
its grace period (600 s here: the stop's end is what is asserted, the test's own timeout the backstop)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from atp_client import typed
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_client.pb.atp.v1 import atp_pb2_grpc as pb_grpc
from atp_service import ManualClock
from tests.atp_service.channel_helpers import fact, write_estate
from tests.conftest import ServiceFactory
from tests.waiting import until

T = 1_700_000_000_000
SKUS = 1000  # x 3 stores: 3000 keys of pickup, one SNAPSHOT message each, far past a 64 KiB window
QUIET, READ = 20, 5
GRACE_S = 600.0
STALL_S = 2.0  # the watches that read end far inside it; the stalled one waited on its write since before the stop
Kind = pb.WatchAvailabilityResponse


async def test_a_stop_with_many_watches_and_a_stalled_reader_ends_within_its_grace(
        start_service: ServiceFactory, tmp_path: Path, clock: ManualClock) -> None:
    service, client = await start_service(clock=clock, estate=write_estate(tmp_path), watch_batch=1,
                                          max_watchers=QUIET + READ + 1, input_streams=(), shutdown_stall_s=STALL_S)
    for start in range(0, SKUS, 250):
        await client.record_events([fact(f"c{n}-{s}", "COUNT", f"sku-{n}", f"store-{s}", 10, T)
                                    for n in range(start, start + 250) for s in (1, 2, 3)])
    desk = service.channels
    assert desk is not None
    await until(lambda: len(desk.feeds["pickup"].published) == SKUS * 3 and not desk.feeds["pickup"].in_flight,
                "every key of pickup published", 60)
    watchers = service._servicer._watchers
    quiet = [client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market")) for _ in range(QUIET)]
    read = [client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="pickup", snapshot=True))
            for _ in range(READ)]
    for call in read:
        while (await call.read()).kind != Kind.KIND_SNAPSHOT_END:
            pass
    # A caller that reads one message of the snapshot, then nothing (no BDP probing: its window stays small).
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}", options=[("grpc.http2.bdp_probe", 0)])
    stalled: Any = pb_grpc.AvailabilityServiceStub(channel).WatchAvailability(  # type: ignore[no-untyped-call]
        pb.WatchAvailabilityRequest(channel="pickup", snapshot=True))
    assert (await stalled.read()).kind == Kind.KIND_SNAPSHOT
    await until(lambda: watchers.open == QUIET + READ + 1, "every watch open")
    # The server has filled the caller's window and its write is blocked: pending for ``shutdown_stall_s``, as
    # the stop's own tally counts a stall. A fixed second did not always see it there on a loaded host: the
    # window still open when the stop began, the watch's SHUTTING_DOWN status went through, nothing was cut
    # (seen: atp_streams_cut_at_stop_total 0).
    book = service._calls
    await until(lambda: any(call.method == "WatchAvailability" and call.writing_since is not None
                            and time.monotonic() - call.writing_since >= STALL_S for call in book._tasks.values()),
                "the stalled reader's write blocked for shutdown_stall_s", 60)
    assert watchers.held_keys == SKUS * 3  # its snapshot not sent whole
    await asyncio.wait_for(service.stop(grace_s=GRACE_S), 60)  # ended: not the grace's 600 s
    assert service.metrics.edge.streams_cut_at_stop.labels("WatchAvailability").value == 1  # the stalled one alone
    for call in quiet + read:
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:
                await asyncio.wait_for(call.read(), 10)
        said = typed(ended.value).refusal
        assert (said.code, said.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN"), ended.value
    with pytest.raises(grpc.aio.AioRpcError) as ended:  # what was written before the stop, then its end
        while True:
            assert (await asyncio.wait_for(stalled.read(), 10)).kind == Kind.KIND_SNAPSHOT
    # Cut by gRPC once every other call had ended: UNAVAILABLE "Cancelling all calls" (its SHUTTING_DOWN status,
    # if the drain reached it, was queued behind what the caller has not read).
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value
    await channel.close()
    assert watchers.open == 0
