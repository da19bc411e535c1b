"""Messages past a size limit, against a real service on a real Redis: ``AtpClient`` reads every answer a
service may be set to send (its ``max_message_bytes`` raised past gRPC's own default receive limit, 4 MiB),
and a request larger than the service takes is raised as the invalid request it is, never as retryable."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
import redis

from atp_client import AtpClient, AtpError, InvalidRequest, Retryable, RetryPolicy, RoutedClient
from atp_client._errors import OUTCOME_UNKNOWN
from atp_client._output import EXIT_INVALID, in_doubt_after, refusal
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from atp_service.config import ServiceConfig
from reservation import Limits
from tests.atp_service.edge.test_api import T0, receipt
from tests.atp_service.edge.test_forward import Relay
from tests.conftest import ServiceFactory
from tests.waiting import until

GRPC_DEFAULT_RECEIVE = 4 << 20
"""What a gRPC channel reads at most unless told otherwise."""


async def test_a_change_answered_past_grpcs_default_receive_limit_is_read_not_refused(
        start_service: ServiceFactory) -> None:
    """A service may be set to send answers up to 2 GiB (``ATP_MAX_MESSAGE_BYTES``, the remedy the docs give
    for answers too large). The client kept gRPC's own receive limit, 4 MiB: a RecordEvents answered in
    5 MB — its valid fact applied — was refused by the client itself, RESOURCE_EXHAUSTED "Received message
    larger than max" with no reason (``Retryable``; told refused, not in doubt, without gRPC's retries),
    and a retry with the same facts failed the same, for ever."""
    _, client = await start_service(clock=ManualClock(T0), max_message_bytes=16 << 20, max_loop_lag_ms=0,
                                    limits=Limits(max_events_per_call=20_000))  # 15,000 facts held the loop late:
    # the next call shed SERVICE_OVERLOADED on a busy host, the answer's size not what was tested
    bad = [receipt(f"bad-{n:05d}-{'x' * 100}", "A", "S1", 0) for n in range(15_000)]  # each answered with its error
    results = await client.record_events([receipt("made", "A", "S1", 5), *bad])
    assert pb.RecordEventsResponse(results=results).ByteSize() > GRPC_DEFAULT_RECEIVE
    assert results[0].outcome == pb.FACT_OUTCOME_APPLIED
    assert {result.outcome for result in results[1:]} == {pb.FACT_OUTCOME_INVALID}
    (position,) = await client.availability([("A", "S1")])
    assert position.on_hand == 5


async def test_a_request_larger_than_the_service_takes_is_invalid_not_retryable(start_service: ServiceFactory) -> None:
    """docs/API.md: a message larger than ``max_message_bytes`` is refused by gRPC itself (RESOURCE_EXHAUSTED,
    no reason), "which no retry can help: send smaller ones". The client raised it ``Retryable`` — retry with
    the same ids, which its README asks of a caller, for ever — and atpctl exited 6 ("retry later, same
    ids") saying, its retries on, that the change may have been made: the service never read it."""
    _, client = await start_service(clock=ManualClock(T0), max_message_bytes=64 << 10)
    facts = [receipt(f"e-{n:04d}-{'x' * 100}", "A", "S1", 1) for n in range(1000)]
    assert pb.RecordEventsRequest(events=facts).ByteSize() > 64 << 10
    with pytest.raises(AtpError) as refused:
        await client.record_events(facts)
    assert isinstance(refused.value, InvalidRequest), repr(refused.value)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # gRPC's own status, as it came
    assert refusal(refused.value)[0] == EXIT_INVALID
    assert not in_doubt_after(refused.value, retried=True)
    (position,) = await client.availability([("A", "S1")])
    assert position.on_hand == 0  # nothing of it was applied


async def test_a_stream_cut_by_a_batch_too_large_leaves_the_batches_sent_before_it_in_doubt(
        start_service: ServiceFactory, redis_url: str) -> None:
    """gRPC refuses a ``ReserveStream`` batch larger than ``max_message_bytes`` by ending the call: the batches sent
    before it were read and decided, their answers never sent. The client raised the end ``InvalidRequest`` ("never
    read, nothing applied"; atpctl exit 3, not in doubt) while a reservation of an earlier batch was HELD."""
    service, client = await start_service(clock=ManualClock(T0), max_message_bytes=64 << 10)
    await client.record_events([receipt("in", "A", "S1", 5)])
    line = [pb.Line(sku="A", location="S1", quantity=1)]
    big = [pb.ReserveRequest(reservation_id=f"big-{n:04d}-{'x' * 100}", lines=line) for n in range(1000)]
    assert pb.ReserveStreamRequest(reservations=big).ByteSize() > 64 << 10

    async def batches() -> AsyncIterator[list[pb.ReserveRequest]]:
        yield [pb.ReserveRequest(reservation_id="sent-first", lines=line)]
        await until(lambda: any(actor.ledger.reservation("sent-first") for actor in service.engine.actors),
                    "the first batch read and decided (its append waits for Redis, paused)")
        yield big

    with redis.Redis.from_url(redis_url) as paused:
        paused.execute_command("CLIENT", "PAUSE", 20_000, "WRITE")  # no answer to the first batch before the cut
        try:
            with pytest.raises(AtpError) as ended:
                async for _ in client.reserve_stream(batches()):
                    pytest.fail("the first batch was answered: Redis was not paused")
        finally:
            paused.execute_command("CLIENT", "UNPAUSE")
    assert isinstance(ended.value, Retryable), repr(ended.value)
    assert ended.value.reason == OUTCOME_UNKNOWN and ended.value.refusal.metadata["unanswered"] == "1"
    assert in_doubt_after(ended.value) and refusal(ended.value)[0] != EXIT_INVALID
    assert (await client.get_reservation("sent-first")).state == pb.RESERVATION_STATE_HELD  # it was made

    async def alone() -> AsyncIterator[list[pb.ReserveRequest]]:
        yield big

    with pytest.raises(InvalidRequest):  # the batch too large alone unanswered: never read, as a unary call's
        async for _ in client.reserve_stream(alone()):
            pass


class Counted(Relay):
    """A relay that counts the bytes it passes, both ways (the answers here are a few hundred bytes)."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.passed = 0

    def _passing(self) -> Callable[[bytes], Awaitable[None]]:
        async def counted(data: bytes) -> None:
            self.passed += len(data)
        return counted


@pytest.mark.parametrize("routed", [False, True], ids=["AtpClient", "RoutedClient"])
async def test_a_request_larger_than_the_service_takes_is_refused_before_it_is_sent_not_sent_five_times(
        start_service: ServiceFactory, routed: bool) -> None:
    """A request larger than the service's ``max_message_bytes`` (4 MiB by default) is refused by gRPC on the
    service's side, RESOURCE_EXHAUSTED — which the service's published retry policy retries (for shed load):
    gRPC sent it again, every byte of it, until its ``maxAttempts`` (5) were spent, the caller unable to stop
    it, then raised ``InvalidRequest``. It is refused before it is sent, naming the limit."""
    service, _ = await start_service(clock=ManualClock(T0))
    relay = Counted(f"127.0.0.1:{service.port}")
    address = await relay.start()
    service._servicer.advertise(address, service.config.shards)  # the routing table names the relay
    reservation_id = "r-" + "x" * (4 << 20)  # one field past the limit: built at once
    size = pb.ReserveRequest(reservation_id=reservation_id).ByteSize()
    assert size > service.config.max_message_bytes == ServiceConfig().max_message_bytes
    client = RoutedClient(address, retry=RetryPolicy()) if routed else AtpClient(address, retry=RetryPolicy())
    async with client:
        with pytest.raises(AtpError) as refused:
            await client.reserve(reservation_id, [("A", "S1", 1)])
    await relay.cut()
    assert relay.passed < size, f"{relay.passed} bytes sent for a request of {size}: {relay.passed / size:.1f} times"
    assert isinstance(refused.value, InvalidRequest), repr(refused.value)
    assert refused.value.refusal.metadata["limit"] == "max_request_bytes", refused.value
    assert refusal(refused.value)[0] == EXIT_INVALID and not in_doubt_after(refused.value, retried=True)


async def test_a_stream_batch_larger_than_max_request_bytes_is_refused_unsent_and_the_batches_before_answered(
        start_service: ServiceFactory) -> None:
    """``max_request_bytes`` bounded unary requests only: a ``ReserveStream`` batch past it was sent, and gRPC on the
    service's side ended the whole stream (RESOURCE_EXHAUSTED) — every batch sent before it and not yet answered left
    in doubt, the caller told ``OUTCOME_UNKNOWN`` or, with none, an error that named no limit. It is refused before it
    is sent (``InvalidRequest`` ``LIMIT_EXCEEDED``), once the batches sent before it are answered; no batch after it is
    taken from the source."""
    service, client = await start_service(clock=ManualClock(T0), max_message_bytes=64 << 10)
    await client.record_events([receipt("in", "A", "S1", 5)])
    relay = Counted(f"127.0.0.1:{service.port}")
    address = await relay.start()
    line = [pb.Line(sku="A", location="S1", quantity=1)]
    big = [pb.ReserveRequest(reservation_id=f"big-{n:04d}-{'x' * 100}", lines=line) for n in range(1000)]
    size = pb.ReserveStreamRequest(reservations=big).ByteSize()
    assert size > 64 << 10
    taken: list[str] = []

    async def batches() -> AsyncIterator[list[pb.ReserveRequest]]:
        for name, batch in (("first", [pb.ReserveRequest(reservation_id="sent-first", lines=line)]), ("big", big),
                            ("after", [pb.ReserveRequest(reservation_id="after", lines=line)])):
            taken.append(name)
            yield batch

    answers: list[pb.ReserveStreamResponse] = []
    async with AtpClient(address, max_request_bytes=64 << 10) as limited:
        with pytest.raises(AtpError) as refused:
            async for answer in limited.reserve_stream(batches()):
                answers.append(answer)
    await relay.cut()
    assert isinstance(refused.value, InvalidRequest), repr(refused.value)
    assert refused.value.reason == "LIMIT_EXCEEDED", refused.value
    assert refused.value.refusal.metadata == {"limit": "max_request_bytes", "size": str(size)}, refused.value
    assert refusal(refused.value)[0] == EXIT_INVALID and not in_doubt_after(refused.value, retried=True)
    assert relay.passed < size, f"{relay.passed} bytes sent past a batch of {size}"
    assert [[o.response.state for o in a.outcomes] for a in answers] == [[pb.RESERVATION_STATE_HELD]]
    assert taken == ["first", "big"]  # the batch after it was never taken, so never in doubt
    (position,) = await client.availability([("A", "S1")])
    assert position.reserved == 1
