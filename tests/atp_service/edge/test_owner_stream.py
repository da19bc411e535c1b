"""One outbound ``ReserveStream`` (``edge.streams.OwnerStream``) against a real gRPC peer scripted
step by step: when it accepts the stream, what it reads, that it never answers. The loop's clock
is moved by hand, so the bound on a part (``PEER_CALL_MAX_S``) is checked without waiting it out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from atp_client import ACCEPTED_KEY
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge import streams
from atp_service.edge.forward import SERVICE
from atp_service.edge.owner_watch import OwnerWatch
from reservation import Reason, Unavailable
from tests.waiting import until

BOUND_S = 100.0
"""``PEER_CALL_MAX_S`` here, in the loop's clock: moved by hand, never waited out."""


class SlowOwner:
    """A peer that accepts a stream only once told to, reads its first part and never answers."""

    def __init__(self) -> None:
        self.opened, self.accept, self.read = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def reserve_stream(self, requests: AsyncIterator[pb.ReserveStreamRequest],
                             context: grpc.aio.ServicerContext[pb.ReserveStreamRequest, pb.ReserveStreamResponse],
                             ) -> AsyncIterator[pb.ReserveStreamResponse]:
        self.opened.set()
        await self.accept.wait()
        await context.send_initial_metadata(((ACCEPTED_KEY, "1"),))
        async for _ in requests:
            self.read.set()  # and never answered
        yield pb.ReserveStreamResponse()  # pragma: no cover - the caller gives up first


async def serving(owner: SlowOwner, *options: tuple[str, int]) -> tuple[grpc.aio.Server, grpc.aio.Channel]:
    """A real gRPC server answering ``ReserveStream`` as ``owner`` does, and a channel to it."""
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, {
        "ReserveStream": grpc.stream_stream_rpc_method_handler(
            owner.reserve_stream, pb.ReserveStreamRequest.FromString, pb.ReserveStreamResponse.SerializeToString)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return server, channel


class LoopClock:
    """The running loop's clock, moved on by hand (``skipped``), and ``PEER_CALL_MAX_S`` at ``BOUND_S``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(streams, "PEER_CALL_MAX_S", BOUND_S)
        loop = asyncio.get_running_loop()
        real_time = loop.time
        self.skipped = 0.0
        monkeypatch.setattr(loop, "time", lambda: real_time() + self.skipped)


def outbound(channel: grpc.aio.Channel) -> streams.OwnerStream:
    """An outbound stream to the owner ``channel`` reaches, as ``Forwarder.open_stream`` opens one."""
    return streams.OwnerStream(channel.stream_stream(  # type: ignore[arg-type]
        f"/{SERVICE.full_name}/ReserveStream", pb.ReserveStreamRequest.SerializeToString,
        pb.ReserveStreamResponse.FromString)(None), "owner", OwnerWatch())


async def test_a_part_waits_for_the_owner_at_most_the_peer_bound_its_acceptance_included(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An owner slow to accept the stream (its loop busy, paused) and then not answering: the wait
    for its headers and the wait for the answer were each bounded by ``PEER_CALL_MAX_S``, so a part
    (and the inbound stream's batch, and its place) was held up to twice the bound that every
    forwarded call keeps. The part is answered in doubt once the bound has passed since it was asked."""
    clock = LoopClock(monkeypatch)
    owner = SlowOwner()
    server, channel = await serving(owner)
    try:
        stream = outbound(channel)
        asked = asyncio.ensure_future(stream.ask(pb.ReserveStreamRequest(reservations=[
            pb.ReserveRequest(reservation_id="r1", lines=[pb.Line(sku="A", location="S1", quantity=1)])]), {0}))
        await owner.opened.wait()
        clock.skipped += 0.9 * BOUND_S  # the owner takes most of the bound to accept the stream
        owner.accept.set()
        await owner.read.wait()  # the part was written (only once the owner had accepted)
        clock.skipped += 0.2 * BOUND_S  # the bound has passed since the part was asked, not since it was written
        done, _ = await asyncio.wait({asked}, timeout=30)  # a fail-safe: it ends within a few turns of the loop
        assert asked in done, "the part was still waiting past PEER_CALL_MAX_S"
        with pytest.raises(Unavailable) as in_doubt:
            await asked
        assert in_doubt.value.reason == Reason.OUTCOME_UNKNOWN  # it was written: the owner may have decided it
        stream.close()
        await asyncio.gather(stream.reader, return_exceptions=True)
    finally:
        await channel.close()
        await server.stop(0)


async def test_a_stream_closed_while_its_owner_has_not_accepted_it_ends_every_part_and_its_reader() -> None:
    """The inbound stream ending (its caller gone) while a part waits for the owner to accept the
    outbound stream: the parts end and no task is left behind; the owner never reads a part. The
    call cancelled here was taken for the owner's refusal (CANCELLED, "Locally cancelled by
    application!" relayed as its items' error): they are told the stream's own end."""
    owner = SlowOwner()
    server, channel = await serving(owner)
    try:
        stream = outbound(channel)
        asked = [asyncio.ensure_future(stream.ask(pb.ReserveStreamRequest(), {0})) for _ in range(2)]
        await owner.opened.wait()
        stream.close()
        ended = await asyncio.gather(*asked, stream.reader, return_exceptions=True)
        assert all(isinstance(e, Unavailable) for e in ended[:2]), ended  # not "the owner refused": it was us
        assert ended[2] is None and not owner.read.is_set()
    finally:
        await channel.close()
        await server.stop(0)


PART_BYTES = 50_000_000
"""Far past any flow-control window gRPC opens to a stream its peer does not read."""


class DeafOwner(SlowOwner):
    """A peer that accepts the stream at once and then reads nothing (its loop stalled, SIGSTOP)."""

    async def reserve_stream(self, requests: AsyncIterator[pb.ReserveStreamRequest],
                             context: grpc.aio.ServicerContext[pb.ReserveStreamRequest, pb.ReserveStreamResponse],
                             ) -> AsyncIterator[pb.ReserveStreamResponse]:
        await context.send_initial_metadata(((ACCEPTED_KEY, "1"),))
        self.opened.set()
        await asyncio.Event().wait()  # never reads: the outbound stream's flow-control window stays spent
        yield pb.ReserveStreamResponse()  # pragma: no cover - the caller gives up first


async def test_a_part_the_owner_does_not_take_is_bounded_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A part larger than the owner's flow-control window waits, being written, for the owner to read
    it: an owner that stalled held the part, the batch and every part behind it for as long as the
    inbound stream lasted (the bound was kept only once the part was written). It is answered in doubt
    once ``PEER_CALL_MAX_S`` has passed since it was asked (perhaps half written)."""
    clock = LoopClock(monkeypatch)
    owner = DeafOwner()
    server, channel = await serving(owner, ("grpc.max_receive_message_length", PART_BYTES * 2))
    try:
        stream = outbound(channel)
        big = pb.ReserveStreamRequest(reservations=[pb.ReserveRequest(reservation_id="r" * PART_BYTES)])
        asked = asyncio.ensure_future(stream.ask(big, {0}))
        await owner.opened.wait()
        for _ in range(3000):  # until the part is being written (its answer awaited in order); 30 s at most
            if stream._waiting:
                break
            await asyncio.sleep(0.01)
        assert stream._waiting, "the part was not written once the owner accepted the stream"
        clock.skipped += 1.1 * BOUND_S
        done, _ = await asyncio.wait({asked}, timeout=30)  # a fail-safe: it ends within a few turns of the loop
        assert asked in done, "the part was still being written past PEER_CALL_MAX_S"
        with pytest.raises(Unavailable) as in_doubt:
            await asked
        assert in_doubt.value.reason == Reason.OUTCOME_UNKNOWN
        assert "did not take the part" in str(in_doubt.value)
        later = await asyncio.gather(stream.ask(pb.ReserveStreamRequest(), {0}), return_exceptions=True)
        assert isinstance(later[0], Unavailable), later  # the stream is broken: the next part is told at once
        stream.close()
        await asyncio.gather(stream.reader, return_exceptions=True)
    finally:
        await channel.close()
        await server.stop(0)


class AnsweringOwner(SlowOwner):
    """A peer that accepts the stream at once, answers every part, and notes when its side of the stream ends."""

    def __init__(self) -> None:
        super().__init__()
        self.ended = asyncio.Event()

    async def reserve_stream(self, requests: AsyncIterator[pb.ReserveStreamRequest],
                             context: grpc.aio.ServicerContext[pb.ReserveStreamRequest, pb.ReserveStreamResponse],
                             ) -> AsyncIterator[pb.ReserveStreamResponse]:
        try:
            await context.send_initial_metadata(((ACCEPTED_KEY, "1"),))
            async for part in requests:
                yield pb.ReserveStreamResponse(outcomes=[pb.ReserveOutcome(reservation_id=r.reservation_id)
                                                         for r in part.reservations])
        finally:
            self.ended.set()


async def test_a_stream_grpcio_ended_with_its_own_internal_is_ended_on_the_owner_too() -> None:
    """grpcio's asyncio client sets its own ``INTERNAL`` "Internal error from Core" on a call (a write failing) on
    its side alone: ``call.cancel()`` then does nothing, and gRPC's core was never told. The outbound stream closed
    so stayed open on the owner, holding its place among the owner's ``max_reserve_streams`` for as long as the peer
    channel lasted (the process's life). It is ended in gRPC's core too (``atp_client.release``)."""
    owner = AnsweringOwner()
    server, channel = await serving(owner)
    try:
        stream = outbound(channel)
        answer = await stream.ask(pb.ReserveStreamRequest(reservations=[
            pb.ReserveRequest(reservation_id="r1", lines=[pb.Line(sku="A", location="S1", quantity=1)])]), {0})
        assert [o.reservation_id for o in answer.outcomes] == ["r1"]
        stream._call._cython_call.set_internal_error("a write failed")  # type: ignore[attr-defined]  # grpcio's own
        stream.close()
        await asyncio.gather(stream.reader, return_exceptions=True)
        await until(owner.ended.is_set, "the stream ended on the owner")
    finally:
        await channel.close()
        await server.stop(0)
