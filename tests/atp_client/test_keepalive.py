"""A watch on a service gone silent (its process paused, its packets dropped) ends: the client pings."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from atp_client import AtpClient, Retryable
from atp_client._client import KEEPALIVE_S
from atp_client._errors import typed
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.app import grpc_server
from tests.atp_client.test_routed import Paused
from tests.atp_service.channel_helpers import write_estate
from tests.conftest import ServiceFactory

PING = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00"
"""An HTTP/2 PING frame's header, not an answer (flags 0): only the client pings here."""


class PingsCounted(Paused):
    """``Paused``, counting the pings that went through it (``pinged`` set once ``pings_wanted`` did)."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.pings, self.pings_wanted, self.pinged = 0, 0, asyncio.Event()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        counting = asyncio.StreamReader()

        async def count() -> None:
            while data := await source.read(65536):
                if self.running.is_set():
                    self.pings += data.count(PING)
                    if self.pings_wanted and self.pings >= self.pings_wanted:
                        self.pinged.set()
                counting.feed_data(data)
            counting.feed_eof()

        counter = asyncio.ensure_future(count())
        try:
            await super()._pipe(counting, sink)
        finally:
            counter.cancel()


def test_the_default_keepalive_is_one_the_service_takes() -> None:
    """Pings closer than the service's minimum are strikes, the third ending the connection."""
    assert KEEPALIVE_S * 1000 >= grpc_server.MIN_PING_INTERVAL_MS


async def test_a_watch_on_a_service_gone_silent_ends_retryable(
        start_service: ServiceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No keepalive: a watch on a paused service (its connection open, nothing answered) waited for ever,
    told nothing. Now pings go on while the watch is idle — more than two, gRPC's default stopping there
    on a call that sends nothing — the service takes them (its policy scaled as the client's pings are),
    and a ping not answered ends the watch ``Retryable`` UNAVAILABLE."""
    monkeypatch.setattr(grpc_server, "MIN_PING_INTERVAL_MS", 500)  # the client's 1 s pings taken, as 20 s are at 5 s
    service, _ = await start_service(estate=write_estate(tmp_path))
    relay = PingsCounted(f"127.0.0.1:{service.port}")
    options = [("grpc.http2.bdp_probe", 0)]  # only keepalive pings
    async with AtpClient(await relay.start(), keepalive_s=1.0, keepalive_timeout_s=1.0, options=options) as client:
        call = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="pickup", snapshot=True))
        while (await asyncio.wait_for(call.read(), 10)).kind != pb.WatchAvailabilityResponse.KIND_SNAPSHOT_END:
            pass
        relay.pings_wanted = relay.pings + 5  # a server taking pings as gRPC does by default ends at the 4th
        await asyncio.wait_for(relay.pinged.wait(), 15)  # idle, pinged: no data sent in between
        watching = asyncio.ensure_future(call.read())
        await asyncio.sleep(0)
        assert not watching.done(), watching  # the service took the pings (no GOAWAY too_many_pings)
        relay.running.clear()  # the service paused
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(watching, 15)
    error = typed(ended.value)
    assert isinstance(error, Retryable) and error.code() == grpc.StatusCode.UNAVAILABLE, error
    await relay.cut()
