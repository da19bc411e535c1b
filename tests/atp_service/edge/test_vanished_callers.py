"""A caller that vanishes (its host powered off, its network cut: the TCP connection left open, nothing sent
or answered) while a stream it opened sends nothing: the service finds it gone by its own pings and frees
the stream's place."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_client.pb.atp.v1 import atp_pb2_grpc as pb_grpc
from atp_service.app import grpc_server
from tests.atp_client.test_routed import Paused
from tests.atp_service.channel_helpers import write_estate
from tests.conftest import ServiceFactory
from tests.waiting import until

Kind = pb.WatchAvailabilityResponse


async def test_a_quiet_watch_whose_caller_vanished_frees_its_place(
        start_service: ServiceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service never pinged its callers (gRPC's server default: after 2 hours): a watch of a quiet channel
    writes nothing, so neither a write (``stream_stall_s``) nor the kernel ever found its caller gone, and the
    watch kept one of ``max_watchers`` places — and a Redis read a second — for hours. Consumers that came back
    elsewhere (a node lost, its pods moved) were refused CAPACITY_REACHED once their ghosts filled the places."""
    monkeypatch.setattr(grpc_server, "KEEPALIVE_MS", 300)  # the service's 60 s pings, scaled down
    monkeypatch.setattr(grpc_server, "KEEPALIVE_TIMEOUT_MS", 300)
    service, _ = await start_service(estate=write_estate(tmp_path))
    watchers = service._servicer._watchers
    relay = Paused(f"127.0.0.1:{service.port}")
    try:
        async with grpc.aio.insecure_channel(await relay.start()) as channel:  # a caller that never pings itself
            call = pb_grpc.AvailabilityServiceStub(channel).WatchAvailability(
                pb.WatchAvailabilityRequest(channel="pickup", snapshot=True))
            while (await asyncio.wait_for(call.read(), 10)).kind != Kind.KIND_SNAPSHOT_END:
                pass
            assert watchers.open == 1
            relay.running.clear()  # the caller vanished: its connection open, nothing of it answers
            await until(lambda: watchers.open == 0, "the vanished caller's watch ended", timeout_s=10)
            call.cancel()
    finally:
        await relay.cut()
