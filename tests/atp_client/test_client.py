"""``AtpClient`` against a real service on a real Redis: what a caller of ``reserve_stream`` is
told about every reservation it hands the stream."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Any

import grpc
import pytest
import redis

from atp_client import ACCEPTED_KEY, AtpClient, AtpError, InvalidRequest, Retryable
from atp_client._client import MAX_STREAM_INFLIGHT
from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_client.test_answer_size import Counted
from tests.atp_client.test_routed import Paused
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory
from tests.waiting import taken_past_its_deadline

WAIT_S = 10.0
"""A bound on waiting for what must happen (never a timing the test relies on)."""


def item(rid: str, sku: str = "A", qty: int = 1) -> pb.ReserveRequest:
    return pb.ReserveRequest(reservation_id=rid, lines=[pb.Line(sku=sku, location="DC", quantity=qty)])


async def test_a_stream_the_caller_closes_sends_nothing_more(start_service: ServiceFactory) -> None:
    """An OMS that stops reading (``break``, then ``aclose``) must not have the client go on
    taking batches from its source and reserving them: holds nobody is told of, for a TTL."""
    _, client = await start_service()
    await client.record_events([receipt("in", "A", "DC", 1000)])
    yielded, closed, more = 0, asyncio.Event(), asyncio.Event()

    async def batches() -> AsyncIterator[Sequence[pb.ReserveRequest]]:
        nonlocal yielded
        try:
            for n in range(50):
                if n:
                    await more.wait()  # the second batch only once the caller has closed the stream
                yielded += 1
                yield [item(f"r-{n}")]
        finally:
            closed.set()

    async with aclosing(client.reserve_stream(batches())) as stream:
        async for answer in stream:
            assert answer.outcomes[0].response.state == pb.RESERVATION_STATE_HELD
            break
    more.set()
    await asyncio.wait_for(closed.wait(), WAIT_S)  # the source is closed, by the client or by running out
    (position,) = await client.availability([("A", "DC")])
    assert (yielded, position.reserved) == (1, 1)


async def test_a_failing_batch_source_is_raised_after_the_answers_to_what_was_sent(
        start_service: ServiceFactory) -> None:
    """The caller's own batch source failing must reach the caller as its error — not as an
    ``asyncio.CancelledError`` — and only once every batch already sent has been answered."""
    _, client = await start_service()
    await client.record_events([receipt("in", "A", "DC", 10)])

    async def batches() -> AsyncIterator[Sequence[pb.ReserveRequest]]:
        yield [item("r-1"), item("r-2")]
        raise LookupError("the order queue went away")

    answers: list[pb.ReserveStreamResponse] = []
    with pytest.raises(LookupError, match="order queue"):
        async for answer in client.reserve_stream(batches()):
            answers.append(answer)
    assert [[o.response.state for o in a.outcomes] for a in answers] == [[pb.RESERVATION_STATE_HELD] * 2]


async def until_settled(client: AtpClient, rid: str, lines: list[tuple[str, str, int]]) -> pb.ReserveResponse:
    """Retry a reserve with the same id, as told (``Retryable``, after its delay), until decided."""
    give_up = time.monotonic() + WAIT_S
    while True:
        try:
            return await client.reserve(rid, lines)
        except Retryable as exc:
            if time.monotonic() > give_up:
                raise
            await asyncio.sleep(exc.retry_delay_s or 0.1)


async def test_a_reserve_that_runs_out_of_deadline_is_in_doubt_and_its_retry_settles_it(
        start_service: ServiceFactory, redis_url: str) -> None:
    """R7, R8: a write whose deadline passed may still land. The client must say "in doubt, retry
    with the same id" (``Retryable``), never a plain failure that an OMS would answer by giving up
    or reserving again under a new id (a double reservation)."""
    service, client = await start_service()
    await client.record_events([receipt("in", "A", "DC", 10)])

    async def hurried_reserve(deadline_s: float) -> pb.ReserveResponse:
        async with AtpClient(f"127.0.0.1:{service.port}", timeout_s=deadline_s) as hurried:
            return await hurried.reserve("late-1", [("A", "DC", 4)])

    with redis.Redis.from_url(redis_url) as pause:
        # The reserve's log append waits until let go: a pause of a fixed time could end before the call came
        # (answered within its deadline), and a call gRPC dropped before the service took it wrote nothing.
        pause.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
        try:
            timed_out = await taken_past_its_deadline(hurried_reserve, service, 0.5)
        finally:
            pause.execute_command("CLIENT", "UNPAUSE")
    assert timed_out.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert isinstance(timed_out, Retryable), f"{type(timed_out).__name__}: {timed_out}"
    settled = await until_settled(client, "late-1", [("A", "DC", 4)])  # the same id: what was decided
    assert settled.state == pb.RESERVATION_STATE_HELD
    (position,) = await client.availability([("A", "DC")])
    assert position.reserved == 4  # held once


async def _silent_stream(requests: AsyncIterator[pb.ReserveStreamRequest], context: Any) -> AsyncIterator[Any]:
    """A ReserveStream that accepts the stream (its headers sent, as the service does), takes every
    batch and answers none (a wedged or paused service)."""
    await context.send_initial_metadata(((ACCEPTED_KEY, "1"),))
    async for _request in requests:
        pass
    await asyncio.Event().wait()
    yield pb.ReserveStreamResponse()  # never reached


@asynccontextmanager
async def _reserve_stream_server(handle: Any) -> AsyncIterator[int]:
    """A gRPC server whose ReserveStream is ``handle``: its port."""
    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(handle, pb.ReserveStreamRequest.FromString,
                                                    pb.ReserveStreamResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "atp.v1.AvailabilityService", {"ReserveStream": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


async def test_a_batch_the_service_never_answers_ends_the_stream_in_doubt() -> None:
    """The stream had no bound: against a service that took batches and answered none, the caller
    waited for ever, its reservations in doubt. No answer for ``timeout_s`` with a batch waiting
    now ends the stream ``Retryable`` (DEADLINE_EXCEEDED: retry with the same ids, R5)."""
    async with _reserve_stream_server(_silent_stream) as port, \
            AtpClient(f"127.0.0.1:{port}", timeout_s=0.5) as client:
        with pytest.raises(Retryable) as err:
            await asyncio.wait_for(_drain(client.reserve_stream([[item("r-1")]])), WAIT_S)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "1 batch(es) sent and not answered are in doubt" in str(err.value.details())


async def test_a_stream_the_service_never_accepts_ends_with_nothing_sent() -> None:
    """The first batch waits for the service's headers (a refusal at the start, written over, was
    told INTERNAL). A service that never sends them ends the stream past ``timeout_s``, certain
    that no batch was sent (``NOT_CONNECTED``), not waiting for ever."""
    taken: list[pb.ReserveStreamRequest] = []

    async def unaccepting(requests: AsyncIterator[pb.ReserveStreamRequest], _context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            taken.append(request)
        await asyncio.Event().wait()
        yield pb.ReserveStreamResponse()  # never reached

    async with _reserve_stream_server(unaccepting) as port, \
            AtpClient(f"127.0.0.1:{port}", timeout_s=0.5) as client:
        with pytest.raises(Retryable) as err:
            await asyncio.wait_for(_drain(client.reserve_stream([[item("r-1")]])), WAIT_S)
    refusal = err.value.refusal
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAVAILABLE, "NOT_CONNECTED"), refusal
    assert "no batch was sent" in refusal.message
    assert taken == []


async def test_a_stream_its_service_leaves_unanswered_ends_with_the_reason_of_a_change_in_doubt(
        start_service: ServiceFactory) -> None:
    """The service took a batch and said nothing (paused, as SIGSTOP does): the stream ends past
    ``timeout_s`` ``DEADLINE_EXCEEDED`` — and, like every other change in doubt the client reports,
    with the reason ``OUTCOME_UNKNOWN`` (it had none: a caller switching on the reason got ""), the
    client's bound in ``limit``. A retry with the same id, once the service runs again, settles it."""
    service, client = await start_service()
    await client.record_events([receipt("in", "A", "DC", 10)])
    paused = Paused(f"127.0.0.1:{service.port}")
    address = await paused.start()
    try:
        async with AtpClient(address, timeout_s=0.5) as hurried:
            await hurried.connect(timeout_s=WAIT_S)  # a bound against a hang: only the stream is hurried

            async def paused_once_accepted() -> AsyncIterator[list[pb.ReserveRequest]]:
                paused.running.clear()  # the stream accepted: its first batch is asked for only then
                yield [item("r-1", qty=4)]

            with pytest.raises(Retryable) as unanswered:
                await asyncio.wait_for(_drain(hurried.reserve_stream(paused_once_accepted())), WAIT_S)
            assert paused.held.is_set() and not paused.running.is_set()  # the batch sent, its process still paused
    finally:
        paused.running.set()
        await paused.cut()
    refusal = unanswered.value.refusal
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "OUTCOME_UNKNOWN"), refusal
    assert (refusal.metadata["limit"], refusal.metadata["unanswered"]) == ("timeout_s", "1")
    settled = await until_settled(client, "r-1", [("A", "DC", 4)])
    assert settled.state == pb.RESERVATION_STATE_HELD
    (position,) = await client.availability([("A", "DC")])
    assert position.reserved == 4  # held once


async def _drain(stream: AsyncIterator[pb.ReserveStreamResponse]) -> list[pb.ReserveStreamResponse]:
    return [answer async for answer in stream]


async def test_a_source_slower_than_the_answer_bound_does_not_end_the_stream(start_service: ServiceFactory) -> None:
    """The bound is on an answer to a batch sent, not on the stream: a caller whose batches come
    slowly (each after longer than ``timeout_s``) keeps its stream."""
    service, _ = await start_service()
    # Each batch is answered within the bound (2 s: a loaded machine answered past 0.3 s, ending the
    # stream, and a stall of its event loop can outlast 1 s).
    async with AtpClient(f"127.0.0.1:{service.port}", timeout_s=2.0) as client:
        await client.record_events([receipt("in", "A", "DC", 10)])
        first_answered = asyncio.Event()

        async def batches() -> AsyncIterator[Sequence[pb.ReserveRequest]]:
            yield [item("slow-1")]
            await asyncio.wait_for(first_answered.wait(), WAIT_S)
            await asyncio.sleep(4.0)  # twice the answer bound with nothing in flight
            yield [item("slow-2")]

        answers = []
        async for answer in client.reserve_stream(batches()):
            answers.append(answer)
            first_answered.set()
        assert [a.outcomes[0].response.state for a in answers] == [pb.RESERVATION_STATE_HELD] * 2


async def test_a_stream_the_service_keeps_answering_is_not_ended_however_many_batches_wait(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """grpc.aio takes batches from the source as fast as HTTP/2 lets it send them — thousands at once —
    while the service decides them in turn. Each batch's bound ran from its own send: a batch waiting
    its turn behind many others ran out, and a stream the service was answering all along ended
    ``DEADLINE_EXCEEDED`` with every later batch "in doubt". The bound is on the service's silence:
    no answer for ``timeout_s`` while batches wait."""
    service, _ = await start_service(max_stream_inflight=1)
    assert service.engine is not None
    decide, one_at_a_time = service.engine.reserve_many, asyncio.Lock()

    async def slowly(cmds: Any, *rest: Any) -> Any:  # a busy service: each batch takes a while, one at a time
        async with one_at_a_time:
            await asyncio.sleep(0.02)
            return await decide(cmds, *rest)

    monkeypatch.setattr(service.engine, "reserve_many", slowly)
    batches = 100  # 2 s of deciding, in all sent at once (a few KiB): twice the answer bound
    async with AtpClient(f"127.0.0.1:{service.port}", timeout_s=1.0) as client:
        await client.record_events([receipt("in", "A", "DC", batches)])
        answers = await _drain(client.reserve_stream([[item(f"busy-{n}")] for n in range(batches)]))
    assert [a.outcomes[0].response.state for a in answers] == [pb.RESERVATION_STATE_HELD] * batches


async def test_a_stream_batch_past_max_batch_reservations_is_refused_unsent_not_told_retryable(
        start_service: ServiceFactory) -> None:
    """The service ends a stream at a batch of more than ``max_batch_reservations`` (1,000) items, ``InvalidRequest``
    ``LIMIT_EXCEEDED``, once the batches before it are answered. grpcio's asyncio client, writing the batches after it,
    mostly told the caller ``INTERNAL`` "Internal error from Core" in its place (grpc/grpc#36066): ``Retryable``, "retry
    with the same ids" — the same batch, refused the same, for ever. It is refused before it is sent, as a batch
    past ``max_request_bytes`` is, and no batch after it is taken from the source."""
    service, client = await start_service()
    await client.record_events([receipt("in", "A", "DC", 10)])
    relay = Counted(f"127.0.0.1:{service.port}")
    address = await relay.start()
    big = [item(f"big-{n:04d}") for n in range(1001)]
    size = pb.ReserveStreamRequest(reservations=big).ByteSize()
    taken: list[str] = []

    def batches() -> Iterator[list[pb.ReserveRequest]]:
        for name, batch in (("first", [item("first")]), ("big", big), *((f"after-{n}", [item(f"after-{n}")])
                                                                         for n in range(200))):
            taken.append(name)
            yield batch

    answers: list[pb.ReserveStreamResponse] = []
    async with AtpClient(address) as relayed:
        with pytest.raises(AtpError) as refused:
            async for answer in relayed.reserve_stream(batches()):
                answers.append(answer)
    await relay.cut()
    assert isinstance(refused.value, InvalidRequest), repr(refused.value)
    said = refused.value.refusal
    assert (said.reason, said.metadata["limit"]) == ("LIMIT_EXCEEDED", "max_batch_reservations"), said
    assert relay.passed < size, f"{relay.passed} bytes sent past a batch of {size}"
    assert [[o.response.state for o in a.outcomes] for a in answers] == [[pb.RESERVATION_STATE_HELD]]
    assert taken == ["first", "big"]


async def test_a_stream_batch_of_no_reservations_is_refused_unsent(start_service: ServiceFactory) -> None:
    """The service ends a stream at a batch of no reservations, ``INVALID_FIELD`` naming ``reservations``; sent, the
    batches written after it raced that end (grpcio's "Internal error from Core": ``Retryable``, the same empty batch
    sent again for ever). It is refused before it is sent, as a batch past ``max_batch_reservations`` is, and no batch
    after it is taken from the source."""
    _, client = await start_service()
    await client.record_events([receipt("in", "A", "DC", 10)])
    taken: list[str] = []

    def batches() -> Iterator[list[pb.ReserveRequest]]:
        for name, batch in (("first", [item("first")]), ("none", []), ("after", [item("after")])):
            taken.append(name)
            yield batch

    answers: list[pb.ReserveStreamResponse] = []
    with pytest.raises(AtpError) as refused:
        async for answer in client.reserve_stream(batches()):
            answers.append(answer)
    assert isinstance(refused.value, InvalidRequest), repr(refused.value)
    said = refused.value.refusal
    assert (said.reason, [v.field for v in said.field_violations]) == ("INVALID_FIELD", ["reservations"]), said
    assert [[o.response.state for o in a.outcomes] for a in answers] == [[pb.RESERVATION_STATE_HELD]]
    assert taken == ["first", "none"]


async def test_a_stream_takes_no_more_batches_than_its_bound_while_the_service_answers_none(
        start_service: ServiceFactory, redis_url: str) -> None:
    """The service decides nothing (Redis paused: it reads ``max_stream_inflight`` batches, then waits); gRPC still
    took every batch the client wrote, buffered unread: the client took batches from the caller's source as fast as
    it could write them — thousands in half a second, its orders drained off its queue — and ended the stream with
    every one of them in doubt, to be re-sent. The client has ``max_stream_inflight`` batches sent and not
    answered at most: the next is taken from the source only once an answer frees a place."""
    service, client = await start_service()
    await client.record_events([receipt("in", "A", "DC", 10)])
    taken = 0

    def endless() -> Iterator[list[pb.ReserveRequest]]:
        nonlocal taken
        while True:
            taken += 1
            yield [item(f"queued-{taken}")]

    async with AtpClient(f"127.0.0.1:{service.port}", timeout_s=0.5) as hurried:
        await hurried.connect(timeout_s=WAIT_S)  # a bound against a hang: only the stream is hurried
        with redis.Redis.from_url(redis_url) as paused:
            paused.execute_command("CLIENT", "PAUSE", 20_000, "WRITE")  # nothing is decided: no answer comes
            try:
                with pytest.raises(Retryable) as unanswered:
                    await asyncio.wait_for(_drain(hurried.reserve_stream(endless())), WAIT_S)
            finally:
                paused.execute_command("CLIENT", "UNPAUSE")
    assert unanswered.value.reason == "OUTCOME_UNKNOWN", unanswered.value
    assert taken <= MAX_STREAM_INFLIGHT, f"{taken} batches taken from the source, none answered"
    assert unanswered.value.refusal.metadata["unanswered"] == str(taken)


async def test_a_stream_its_service_ends_with_its_batches_in_flight_leaves_no_sender_waiting_for_ever() -> None:
    """The service ends the stream with a status (its stop, its ``stream_stall_s``, a refusal) while
    ``max_stream_inflight`` batches wait for their answers: the sender — grpc.aio's task taking batches from the
    caller's source — waited for an answer to free a place, which none would. Ending the call did not stop it:
    grpc.aio cancels that task only for a call not over yet. It waited for ever, the caller's source held open,
    past the client's close ("Task was destroyed but it is pending"). It ends with the stream, and takes no
    batch after the end."""
    taken = 0

    def endless() -> Iterator[list[pb.ReserveRequest]]:
        nonlocal taken
        while True:
            taken += 1
            yield [item(f"cut-{taken}")]

    async def ending(requests: AsyncIterator[pb.ReserveStreamRequest], context: Any) -> AsyncIterator[Any]:
        await context.send_initial_metadata(((ACCEPTED_KEY, "1"),))
        await anext(aiter(requests))  # the first batch read, then the stream ended unanswered
        await context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")
        yield pb.ReserveStreamResponse()  # never reached

    def senders() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks()
                if not t.done() and "_consume_request_iterator" in t.get_coro().__qualname__]  # type: ignore[union-attr]

    async with _reserve_stream_server(ending) as port, \
            AtpClient(f"127.0.0.1:{port}", timeout_s=WAIT_S, max_stream_inflight=1) as client:
        with pytest.raises(AtpError):  # UNAVAILABLE, or gRPC's INTERNAL in its place (grpc/grpc#36066)
            await asyncio.wait_for(_drain(client.reserve_stream(endless())), WAIT_S)
        if running := senders():
            await asyncio.wait(running, timeout=WAIT_S)
        left = [(task, task.get_stack()) for task in senders()]
        for task, _ in left:  # not left to the loop's end
            task.cancel()
    assert not left, f"the stream's sender still waits, at {left[0][1]}"
    assert taken == 1


async def test_a_caller_slow_to_take_each_answer_does_not_end_its_stream_in_doubt(
        start_service: ServiceFactory) -> None:
    """The caller takes its time with an answer (its own awaits: writing it down, its next order) past ``timeout_s``,
    batches in flight: the bound counted that time as the service's silence, and on the caller's next read ended the
    stream at once, DEADLINE_EXCEEDED ``OUTCOME_UNKNOWN`` "no answer for 1s", without reading the answer the service
    had long sent — every batch left in doubt, the caller told the service was silent. Time the caller is away from
    the stream is not the service's silence (the service bounds that itself: ``stream_stall_s``)."""
    service, _ = await start_service()
    async with AtpClient(f"127.0.0.1:{service.port}", timeout_s=1.0) as client:
        await client.record_events([receipt("in", "A", "DC", 2)])
        answers = []
        async for answer in client.reserve_stream([[item("away-1")], [item("away-2")]]):
            answers.append(answer)
            if len(answers) == 1:
                await asyncio.sleep(1.5)  # the caller's own work on the answer, past timeout_s
    assert [a.outcomes[0].response.state for a in answers] == [pb.RESERVATION_STATE_HELD] * 2


async def test_a_stream_is_not_ended_by_a_stall_of_the_callers_own_process(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process stalls past the answer bound (a long collection, a starved CPU; here the in-process service
    blocking the event loop) while a batch waits: when it runs again, the bound's timer ran before the answer
    was read, and the stream ended DEADLINE_EXCEEDED, the batch in doubt, though the service was never silent.
    Time this process did not run is no silence of the service."""
    service, _ = await start_service()
    assert service.engine is not None
    decide = service.engine.reserve_many

    async def after_a_stall(cmds: Any, *rest: Any) -> Any:
        time.sleep(1.5)  # noqa: ASYNC251 -- the stall itself: the whole process, client and service, held
        return await decide(cmds, *rest)

    monkeypatch.setattr(service.engine, "reserve_many", after_a_stall)
    async with AtpClient(f"127.0.0.1:{service.port}", timeout_s=0.5) as client:
        await client.record_events([receipt("in", "A", "DC", 2)])
        answers = await _drain(client.reserve_stream([[item("stalled-1")], [item("stalled-2")]]))
    assert [a.outcomes[0].response.state for a in answers] == [pb.RESERVATION_STATE_HELD] * 2


async def test_a_stream_is_not_refused_as_unaccepted_for_a_stall_of_the_callers_own_process(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process stalls past the client's bound while its stream waits to be accepted (a long collection, a starved
    CPU; here the in-process service blocking the event loop as it takes the stream up): when it ran again, the
    bound's timer ran before the service's headers were read, and the stream ended UNAVAILABLE ``NOT_CONNECTED`` "not
    accepted within 0.5s", though the service accepted it as soon as the process ran. Time this process did not run
    is no silence of the service, before the stream is accepted as after."""
    service, _ = await start_service()
    enter = service._servicer._enter_stream

    def after_a_stall() -> None:
        time.sleep(1.0)  # the stall itself: the whole process, client and service, held
        enter()

    monkeypatch.setattr(service._servicer, "_enter_stream", after_a_stall)
    async with AtpClient(f"127.0.0.1:{service.port}", timeout_s=0.5) as client:
        await client.record_events([receipt("in", "A", "DC", 2)])
        answers = await _drain(client.reserve_stream([[item("stalled-1")]]))
    assert [a.outcomes[0].response.state for a in answers] == [pb.RESERVATION_STATE_HELD]


async def test_a_stream_never_accepted_ends_though_every_wait_of_the_caller_s_loop_overruns() -> None:
    """Each wait for the service to accept that came back late (this process not running: here the caller's own loop
    blocked in slices of 0.2 s, longer than ``STALL_SLACK_S``) lengthened the bound by the whole wait, every one of
    them: with a service that never accepts, the stream waited for ever. At most ``STALLS_FORGIVEN`` are credited."""

    async def unaccepting(requests: AsyncIterator[pb.ReserveStreamRequest], _context: Any) -> AsyncIterator[Any]:
        await asyncio.Event().wait()
        yield pb.ReserveStreamResponse()  # never reached

    def blocking_work() -> None:
        time.sleep(0.2)  # the caller's own blocking work, between turns of its loop

    async def blocking_in_slices() -> None:
        while True:
            blocking_work()
            await asyncio.sleep(0.01)

    async with _reserve_stream_server(unaccepting) as port, \
            AtpClient(f"127.0.0.1:{port}", timeout_s=0.5) as client:
        await client.connect(timeout_s=WAIT_S)
        blocker = asyncio.create_task(blocking_in_slices())
        try:
            with pytest.raises(Retryable) as err:
                await asyncio.wait_for(_drain(client.reserve_stream([[item("r-1")]])), WAIT_S)
        finally:
            blocker.cancel()
    refusal = err.value.refusal
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAVAILABLE, "NOT_CONNECTED"), refusal


async def test_a_stream_refused_after_bare_headers_is_written_nothing_and_told_the_refusal() -> None:
    """grpcio may hand over a refusal's (empty) headers before its status: the first batch, written
    as soon as any headers came, raced the refusal again. Only headers carrying ``ACCEPTED_KEY`` open
    the stream to batches; the service here sends bare ones, waits a second for a batch, then refuses."""
    taken: list[pb.ReserveStreamRequest] = []

    async def refusing(requests: AsyncIterator[pb.ReserveStreamRequest], context: Any) -> AsyncIterator[Any]:
        await context.send_initial_metadata(())
        with contextlib.suppress(TimeoutError, StopAsyncIteration):
            taken.append(await asyncio.wait_for(anext(aiter(requests)), 1.0))
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "full")
        yield pb.ReserveStreamResponse()  # never reached

    async with _reserve_stream_server(refusing) as port, AtpClient(f"127.0.0.1:{port}", timeout_s=10) as client:
        with pytest.raises(Retryable) as err:
            await asyncio.wait_for(_drain(client.reserve_stream([[item("r-1")]])), WAIT_S)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
    assert taken == []
