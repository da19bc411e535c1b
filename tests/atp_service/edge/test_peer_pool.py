"""The pool of channels to peer processes (``edge.peer_pool``): a channel dropped from it (``MAX_PEERS``)
is closed only once its last call has ended, never under a call in flight on it."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from atp_client import AtpClient, typed
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge import forward
from atp_service.edge.forward import Forwarder
from atp_service.edge.peer_pool import PeerChannels
from atp_service.edge.peers import step_sender
from atp_service.edge.routing import Route, RoutingTable
from atp_service.metrics import EdgeMetrics
from reservation import Moved, Reason, Unavailable
from tests.atp_service.edge.test_forward import TOKEN, InHand, Pair, Relay, lost_in_hand, moved_away, pair
from tests.atp_service.edge.test_routing import stock
from tests.ports import held_port

__all__ = ["pair"]  # the fixture, used here by name
FAIL_SAFE_S = 20.0
"""Bounds a wait that a broken run would never end; never reached when the code is right."""


async def test_a_forwarded_call_in_flight_on_a_channel_dropped_from_the_pool_is_answered_then_the_channel_closed(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process forwarding to more peers than its pool keeps (``MAX_PEERS``; here 1) dropped the least
    recently used channel and closed it with a grace of 5 s: a Reserve forwarded on it and still in its
    owner's hands past the grace was cancelled and answered OUTCOME_UNKNOWN — in doubt for no fault of
    anyone — while the owner made it (R7: correct but needless). A grace of 0 stands for an owner slower
    than any grace. The channel is closed once the call has ended instead, and the pool stays bounded."""
    a, a_address, b, b_address = pair
    monkeypatch.setattr(forward, "PEER_CLOSE_GRACE_S", 0.0, raising=False)
    forwarder = a._servicer.forwarder = Forwarder(a.metrics.edge, max_peers=1)
    forwarder.address = a_address
    in_hand, let_go = asyncio.Event(), asyncio.Event()
    reserve = b.engine.reserve

    async def held(*args: Any, **kwargs: Any) -> Any:
        in_hand.set()
        await let_go.wait()
        return await reserve(*args, **kwargs)

    async with AtpClient(a_address, token=TOKEN, timeout_s=FAIL_SAFE_S) as via_a, \
            AtpClient(b_address, token=TOKEN, timeout_s=FAIL_SAFE_S) as at_b:
        await stock(at_b, b.clock.now_ms())
        monkeypatch.setattr(b.engine, "reserve", held)
        moved_away(monkeypatch, a, "reserve", b_address)
        reserving = asyncio.ensure_future(via_a.reserve("r1", [("A", "L", 2)]))
        await asyncio.wait_for(in_hand.wait(), FAIL_SAFE_S)  # the Reserve is in B's hands, on A's channel to B

        elsewhere = f"127.0.0.1:{held_port()}"  # another peer (nobody listens there): B's channel leaves the pool
        moved_away(monkeypatch, a, "confirm", elsewhere)
        with pytest.raises(grpc.aio.AioRpcError):
            await via_a.confirm("r0")
        assert forwarder.peers == [elsewhere]

        let_go.set()
        made = await reserving  # B's answer, as B made it: not OUTCOME_UNKNOWN
        assert made.state == pb.RESERVATION_STATE_HELD
        assert (await at_b.get_reservation("r1")).lines[0].held == 2
        assert forwarder.open_channels == 1  # B's, dropped from the pool, closed once its call had ended



async def test_an_outbound_stream_with_an_item_in_flight_keeps_its_channel_until_it_ends(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``ReserveStream`` item forwarded to its owner over an outbound stream (open as long as the inbound
    one): the channel under it dropped from the pool and closed with its grace cut the stream, and the
    item still in the owner's hands was answered OUTCOME_UNKNOWN while the owner made it. The stream
    keeps its channel until it ends, and the channel is closed then."""
    a, a_address, b, b_address = pair
    monkeypatch.setattr(forward, "PEER_CLOSE_GRACE_S", 0.0, raising=False)  # an owner slower than any grace
    forwarder = a._servicer.forwarder = Forwarder(a.metrics.edge, max_peers=1)
    forwarder.address = a_address
    group = moved_away(monkeypatch, a, "confirm", f"127.0.0.1:{held_port()}")

    async def owned_by_b(cmds: list[Any], now: Any) -> list[Any]:
        out: list[Any] = [Moved(group, b_address, epoch=7) for _ in cmds]
        now(out)
        return out

    in_hand, let_go = asyncio.Event(), asyncio.Event()
    reserve_many = b.engine.reserve_many

    async def held(*args: Any, **kwargs: Any) -> Any:
        in_hand.set()
        await let_go.wait()
        return await reserve_many(*args, **kwargs)

    async with AtpClient(a_address, token=TOKEN, timeout_s=FAIL_SAFE_S) as via_a, \
            AtpClient(b_address, token=TOKEN, timeout_s=FAIL_SAFE_S) as at_b:
        await stock(at_b, b.clock.now_ms())
        monkeypatch.setattr(a.engine, "reserve_many", owned_by_b)
        monkeypatch.setattr(b.engine, "reserve_many", held)
        call = via_a.stub.ReserveStream(timeout=FAIL_SAFE_S)
        await call.write(pb.ReserveStreamRequest(reservations=[
            pb.ReserveRequest(reservation_id="r1", lines=[pb.Line(sku="A", location="L", quantity=2)])]))
        await asyncio.wait_for(in_hand.wait(), FAIL_SAFE_S)  # the item is in B's hands, on A's stream to B

        with pytest.raises(grpc.aio.AioRpcError):  # another peer: B's channel leaves the pool
            await via_a.confirm("r0")
        let_go.set()
        answer = await call.read()
        assert isinstance(answer, pb.ReserveStreamResponse)
        assert answer.outcomes[0].WhichOneof("result") == "response", answer  # B's, not OUTCOME_UNKNOWN
        assert forwarder.open_channels == 2  # B's stays open under its stream
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
        assert forwarder.open_channels == 1  # B's closed once the stream had ended
        assert (await at_b.get_reservation("r1")).lines[0].held == 2



async def test_a_full_pool_drops_an_idle_channel_first_and_refuses_past_its_bound_with_nothing_sent() -> None:
    """The pool's rules, on channels never connected: the least recently used channel with no call in
    flight leaves first; one with calls in flight leaves only when every one has, and is closed once its
    last call ends; past ``max_open`` channels all in use a call is refused, nothing sent (SERVICE_OVERLOADED:
    retried, not in doubt)."""
    pool = PeerChannels(grpc.aio.insecure_channel, max_peers=2, max_open=3)
    first, first_done = pool.taken("127.0.0.1:1")
    with pool.using("127.0.0.1:2"):
        pass
    _, third_done = pool.taken("127.0.0.1:3")
    assert pool.peers == ["127.0.0.1:1", "127.0.0.1:3"]  # 2, idle, left; 1, the least recently used, in use
    _, fourth_done = pool.taken("127.0.0.1:4")
    assert (pool.peers, pool.open) == (["127.0.0.1:3", "127.0.0.1:4"], 3)  # 1 left the pool, open under its call
    with pytest.raises(Unavailable) as refused:
        pool.taken("127.0.0.1:5")
    assert (refused.value.reason, refused.value.metadata) == (Reason.SERVICE_OVERLOADED,
                                                              {"limit": "max_peer_channels"})
    first_done()
    first_done()  # once only: a second call of it counts nothing
    assert pool.open == 2
    with pool.using("127.0.0.1:5"):  # room again: 3 leaves the pool, its call still in flight
        assert (pool.peers, pool.open) == (["127.0.0.1:4", "127.0.0.1:5"], 3)
    third_done()
    fourth_done()
    await pool.aclose()
    assert pool.open == 0
    with pytest.raises(grpc.aio.UsageError):  # 1 was closed once its call had ended
        await first.unary_unary("/atp.v1.AvailabilityService/GetRouting")(b"", timeout=1)
    with pytest.raises(Unavailable) as stopping:
        pool.taken("127.0.0.1:1")
    assert stopping.value.reason == Reason.SHUTTING_DOWN


async def test_an_item_whose_owner_no_channel_can_reach_now_is_refused_alone_and_the_batch_answered(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``ReserveStream`` item for another process's group when the pool refuses a channel (past
    ``MAX_PEER_CHANNELS``, all in use; here: the forwarder closed, refused alike) is refused with that
    refusal, nothing sent: the batch is answered, not failed whole with the stream."""
    a, a_address, _, b_address = pair
    forwarder = a._servicer.forwarder = Forwarder(a.metrics.edge)
    forwarder.address = a_address
    await forwarder.aclose()
    group = moved_away(monkeypatch, a, "confirm", b_address)

    async def owned_by_b(cmds: list[Any], now: Any) -> list[Any]:
        out: list[Any] = [Moved(group, b_address, epoch=7) for _ in cmds]
        now(out)
        return out

    monkeypatch.setattr(a.engine, "reserve_many", owned_by_b)
    async with AtpClient(a_address, token=TOKEN, timeout_s=FAIL_SAFE_S) as via_a:
        call = via_a.stub.ReserveStream(timeout=FAIL_SAFE_S)
        await call.write(pb.ReserveStreamRequest(reservations=[
            pb.ReserveRequest(reservation_id="r1", lines=[pb.Line(sku="A", location="L", quantity=2)])]))
        answer = await call.read()
        assert isinstance(answer, pb.ReserveStreamResponse), await call.details()
        assert answer.outcomes[0].error.code == grpc.StatusCode.UNAVAILABLE.value[0], answer
        assert "stopping" in answer.outcomes[0].error.message
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK


async def test_a_located_change_lost_with_its_holder_is_in_doubt_whatever_peer_the_pool_could_not_reach(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Confirm of a reservation held elsewhere is asked of every other process; the holder was lost with it
    in hand, and the ask of another peer was refused by the pool, nothing sent (``MAX_PEER_CHANNELS`` all in
    use). That refusal was raised as the caller's answer (SERVICE_OVERLOADED: nothing done) whatever the
    others said, while the holder had made the change: it is in doubt (R7), and answered so."""
    a, a_address, b, b_address = pair
    assert b.engine is not None
    relay = Relay(b_address)
    holder = await relay.start()
    unreached = "127.0.0.1:1"
    shards = a.config.shards
    table = RoutingTable(shards, a_address,
                         (Route(0, unreached, 1), *(Route(g, holder, 1) for g in range(1, shards))))
    forwarder = a._servicer.forwarder = Forwarder(a.metrics.edge, max_peers=1)  # 2 channels open at most
    forwarder.address, forwarder.routing = a_address, lambda: table
    in_hand = InHand(b.engine.confirm)
    async with AtpClient(a_address, token=TOKEN, timeout_s=FAIL_SAFE_S) as via_a, \
            AtpClient(b_address, token=TOKEN, timeout_s=FAIL_SAFE_S) as at_b:
        await stock(at_b, b.clock.now_ms())
        await at_b.reserve("r1", [("A", "L", 2)])

        async def not_here(*_args: Any) -> Any:
            raise Moved(-1, "", serving=())

        monkeypatch.setattr(a.engine, "confirm", not_here)
        monkeypatch.setattr(b.engine, "confirm", in_hand)
        with forwarder.using("127.0.0.1:2"), forwarder.using(holder):  # both open, in use: no room for a third
            lost = await lost_in_hand(via_a.confirm("r1"), in_hand, relay)
        assert (await at_b.get_reservation("r1")).state == pb.RESERVATION_STATE_CONFIRMED  # it was made
    refusal = typed(lost).refusal
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN"), refusal


async def test_an_order_step_with_no_channel_for_it_is_told_as_a_step_not_answered() -> None:
    """An order's step the pool has no channel for (``MAX_PEER_CHANNELS`` all in use): as a peer not reached,
    the order goes on later (OUTCOME_UNKNOWN to the saga) — not SERVICE_OVERLOADED, which a peer asking this
    process for the step (its ``Peers/Step``) would read as this process's shard shedding it."""
    forwarder = Forwarder(EdgeMetrics(), max_peers=1)
    try:
        with forwarder.using("127.0.0.1:1"), forwarder.using("127.0.0.1:2"), pytest.raises(Unavailable) as refused:
            await step_sender(forwarder, None)("127.0.0.1:3", b"")
        assert refused.value.reason == Reason.OUTCOME_UNKNOWN, refused.value
        assert "not sent" in refused.value.message
    finally:
        await forwarder.aclose()
