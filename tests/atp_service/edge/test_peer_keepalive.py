"""A peer gone silent on a quiet peer channel is found out by the channel's pings, between two real services:
an owner's ``ReserveStream`` with nothing to send (the items of its groups sent on by another process) pings on,
and a ping the owner leaves unanswered ends the stream within the peer keepalive bound — the items written to
it then answered in doubt (``OUTCOME_UNKNOWN``, R7), not ``PEER_CALL_MAX_S`` (30 s) later. The keepalive is
scaled down here (``forward._OPTIONS``: only the values of the keys it sets), as the client's test does."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from atp_client import AtpClient, Refusal, place
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from atp_service.app import grpc_server
from atp_service.edge import forward
from reservation import Moved
from tests.atp_client.test_keepalive import PingsCounted
from tests.atp_service.edge.test_routing import advertised, stock
from tests.conftest import ServiceFactory
from tests.waiting import until

KEEPALIVE_MS = 1_000
"""The peer channels' pings, and how long one waits for its answer, in this test (10 s and 5 s in service)."""
SHORT = {"grpc.keepalive_time_ms": KEEPALIVE_MS, "grpc.keepalive_timeout_ms": KEEPALIVE_MS,
         "grpc.http2.ping_timeout_ms": KEEPALIVE_MS}
FOUND_OUT_S = 10.0
"""A silent owner found out within this: a few pings and their timeouts, well short of ``PEER_CALL_MAX_S``."""


def _sent_on(monkeypatch: pytest.MonkeyPatch, service: AtpService, owner: str) -> None:
    """``service``'s engine refuses every item of a ``ReserveStream`` as owned by ``owner``: sent on there."""
    group = place("A", service.config.shards)
    assert service.engine is not None

    async def moved(cmds: list[Any], asked: Any = None) -> list[Any]:
        out: list[Any] = [Moved(group, owner, epoch=7) for _ in cmds]
        if asked is not None:
            asked(out)
        return out

    monkeypatch.setattr(service.engine, "reserve_many", moved)


def _batch(rid: str) -> pb.ReserveStreamRequest:
    return pb.ReserveStreamRequest(reservations=[pb.ReserveRequest(reservation_id=rid,
                                                                   lines=[pb.Line(sku="A", location="L", quantity=1)])])


def test_the_peer_keepalive_is_one_a_peer_takes() -> None:
    """Pings closer than a peer's ``MIN_PING_INTERVAL_MS`` are strikes, the third ending the connection."""
    assert forward.PEER_KEEPALIVE_MS >= grpc_server.MIN_PING_INTERVAL_MS


async def test_an_owner_gone_silent_on_a_quiet_stream_is_found_out_by_the_peer_channels_pings(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``grpc.http2.max_pings_without_data`` 0 the peer channel stopped pinging after two pings on the
    owner's quiet stream (nothing sent on it), so an owner silent from then on went unnoticed; without
    ``grpc.http2.ping_timeout_ms`` a ping unanswered was given up after gRPC's minute, not
    ``PEER_KEEPALIVE_TIMEOUT_MS``: the item written to the silent owner waited out ``PEER_CALL_MAX_S``."""
    monkeypatch.setattr(grpc_server, "MIN_PING_INTERVAL_MS", KEEPALIVE_MS // 2)  # the owner takes the 1 s pings
    monkeypatch.setattr(forward, "_OPTIONS", [(key, SHORT.get(key, value)) for key, value in forward._OPTIONS])
    owner, at_owner = await start_service(key_prefix="atp-b:")
    await stock(at_owner, owner.clock.now_ms())
    relay = PingsCounted(advertised(owner))
    entry, client = await start_service()
    advertised(entry)
    _sent_on(monkeypatch, entry, await relay.start())
    call = client.stub.ReserveStream()
    try:
        await call.write(_batch("r1"))
        (first,) = (await asyncio.wait_for(call.read(), 10)).outcomes
        assert first.response.state == pb.RESERVATION_STATE_HELD, first  # decided by the owner, through the relay
        relay.pings_wanted = relay.pings + 5  # gRPC's default stops at the second on a call sending nothing
        await until(relay.pinged.is_set, "the quiet outbound stream pinged 5 times", 15)  # 2 without the fix
        relay.running.clear()  # the owner gone silent: its connection open, nothing answered
        await call.write(_batch("r2"))
        reading = asyncio.ensure_future(call.read())
        await asyncio.wait({reading}, timeout=FOUND_OUT_S)
        assert reading.done(), f"the item written to the silent owner not answered in {FOUND_OUT_S:g}s"
        (second,) = reading.result().outcomes
        told = Refusal.from_status(second.error)
        assert (told.code, told.reason) == (grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN"), told  # written: R7
        assert "failed the stream (UNAVAILABLE" in second.error.message, second  # the ping, not PEER_CALL_MAX_S
        relay.running.set()  # the owner back: a retry with the same id answers what was decided (R5)
        await until(lambda: _settled(client, "r2"), "r2 settled at its owner once it is back", 30, every_s=0.5)
    finally:
        call.cancel()
        await relay.cut()


async def _settled(client: AtpClient, rid: str) -> bool:
    retry = client.stub.ReserveStream()
    try:
        await retry.write(_batch(rid))
        (outcome,) = (await asyncio.wait_for(retry.read(), 10)).outcomes
        return outcome.HasField("response") and outcome.response.state == pb.RESERVATION_STATE_HELD
    finally:
        retry.cancel()
