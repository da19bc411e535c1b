"""Graceful stop: new calls refused UNAVAILABLE, calls in progress answered, open streams ended
UNAVAILABLE at once instead of being cut off when the grace period runs out."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from atp_client import typed
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge.drain import SHUTTING_DOWN, Drain
from reservation import Unavailable
from tests.atp_service.channel_helpers import write_estate
from tests.atp_service.edge.test_abandoned_streams import writes_paused
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.refusals import said
from tests.conftest import ServiceFactory
from tests.waiting import until


# -- the Drain itself (no I/O) ------------------------------------------------------------------
async def test_close_waits_for_the_calls_in_progress_and_refuses_new_ones() -> None:
    drain = Drain()
    drain.enter()

    async def close() -> tuple[bool, int]:  # the calls in progress as ``close`` returned (read in its step)
        return await drain.close(timeout_s=5), drain.active

    closing = asyncio.ensure_future(close())
    # Seen, not slept on: a sleep passed a close that returned with the call still in progress wherever it returned
    # later than the sleep. It waits for the calls in progress to leave (its ``_idle`` event), and returns only after.
    await until(lambda: getattr(drain._idle, "_waiters", None), "the close waiting for the call in progress", 5)
    with pytest.raises(Unavailable, match="shutting down"):
        drain.enter()
    drain.leave()
    assert await closing == (True, 0)


async def test_close_gives_up_after_its_timeout_and_says_so() -> None:
    drain = Drain()
    drain.enter()
    assert await drain.close(timeout_s=0.01) is False
    assert drain.active == 1


async def test_until_closed_gives_up_a_read_that_waits_and_keeps_what_came_before() -> None:
    drain = Drain()
    second_read_started = asyncio.Event()
    gave_up = asyncio.Event()

    async def items() -> AsyncIterator[int]:
        yield 1
        second_read_started.set()
        try:
            await asyncio.sleep(3600)  # a client that sends nothing more
        finally:
            gave_up.set()
        yield 2

    got: list[int] = []

    async def consume() -> None:
        async for item in drain.until_closed(items()):
            got.append(item)

    consumer = asyncio.ensure_future(consume())
    await second_read_started.wait()
    assert await drain.close(timeout_s=1) is True
    await asyncio.wait_for(consumer, 5)
    assert got == [1] and gave_up.is_set()


async def _loses_one_cancellation(read_started: asyncio.Event, gave_up: asyncio.Event) -> AsyncIterator[int]:
    """A watch's stream whose second read loses the first cancellation and reads on, as redis-py's
    XREAD does under Python 3.11 (its send's ``asyncio.wait_for`` returns the send's result when that
    finishes in the same turn as the cancellation; the read of the reply then waits for updates)."""
    yield 1
    read_started.set()
    try:
        with contextlib.suppress(asyncio.CancelledError):  # lost, as the library loses it
            await asyncio.sleep(3600)
        await asyncio.sleep(3600)  # a quiet channel: no update comes
    finally:
        gave_up.set()
    yield 2


async def test_until_closed_ends_a_stream_whose_read_loses_the_cancellation() -> None:
    drain = Drain()
    read_started, gave_up = asyncio.Event(), asyncio.Event()
    got: list[int] = []

    async def consume() -> None:
        async for item in drain.until_closed(_loses_one_cancellation(read_started, gave_up)):
            got.append(item)

    consumer = asyncio.ensure_future(consume())
    await read_started.wait()
    assert await drain.close(timeout_s=1) is True
    finished, _ = await asyncio.wait([consumer], timeout=30)  # the test's own bound: without the fix, an hour
    assert finished, "the stream went on reading after the drain closed: the stop waits out its grace period"
    assert got == [1] and gave_up.is_set()


async def test_a_read_given_up_by_a_gone_caller_ends_even_when_it_loses_the_cancellation() -> None:
    drain = Drain()
    read_started, gave_up = asyncio.Event(), asyncio.Event()

    await _hung_up(drain, _loses_one_cancellation(read_started, gave_up), read_started)
    with contextlib.suppress(TimeoutError):  # the test's own bound: without the fix, an hour
        await asyncio.wait_for(gave_up.wait(), 30)
    assert gave_up.is_set(), "the read went on for nobody after its caller was gone"


async def _answers_though_cancelled(read_started: asyncio.Event, places: list[int]) -> AsyncIterator[int]:
    """A watch (its ``finally`` gives its ``max_watchers`` place back) whose read loses the cancellation and
    ends with an item all the same: redis-py's XREAD answered in the loop turn it was cancelled (Python 3.11)."""
    places.append(1)
    try:
        yield 1
        read_started.set()
        with contextlib.suppress(asyncio.CancelledError):  # lost, as the library loses it
            await asyncio.sleep(3600)
        yield 2  # the read's answer: the generator waits here for a reader that is gone
        yield 3
    finally:
        places.pop()


async def test_a_read_given_up_that_answers_all_the_same_has_its_generator_closed() -> None:
    """Defect: the read given up by a gone caller was cancelled, but a cancellation lost by redis-py ended it
    with an update instead; the watch's generator was left at its ``yield``, nobody to close it, and its place
    among ``max_watchers`` stayed counted (watchers refused RESOURCE_EXHAUSTED with none open)."""
    drain = Drain()
    read_started, places = asyncio.Event(), list[int]()
    inner = _answers_though_cancelled(read_started, places)  # held here: only an explicit close can end it

    await _hung_up(drain, inner, read_started)
    await until(lambda: not places, "the generator closed: its place given back", 30)


class _EndsWhenTold:
    """A request stream (a plain async iterator, as the servicer's ``_Checked``) whose one read ends
    the stream when ``end`` is set."""

    def __init__(self) -> None:
        self.end: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reading = asyncio.Event()

    def __aiter__(self) -> _EndsWhenTold:
        return self

    async def __anext__(self) -> int:
        self.reading.set()
        await self.end
        raise StopAsyncIteration


async def test_a_read_ending_as_its_caller_goes_leaves_no_unheard_end() -> None:
    """A caller gone (its handler cancelled) in the loop turn its stream's read ended — a ReserveStream
    cancelled, so gRPC ends its requests too — left the read's end unheard: asyncio logged "Task
    exception was never retrieved … StopAsyncIteration" for every such stream."""
    loop = asyncio.get_running_loop()
    unheard: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unheard.append(context))
    try:
        requests = _EndsWhenTold()

        async def consume() -> None:
            async for _ in Drain().until_closed(requests):
                pass

        consumer = asyncio.ensure_future(consume())
        await requests.reading.wait()
        requests.end.set_result(None)  # the read ends in the next turn ...
        consumer.cancel()  # ... and so does the caller
        await asyncio.wait([consumer], timeout=30)
        assert consumer.cancelled()
        del consumer  # its cancellation's traceback holds the read
        gc.collect()
        assert not unheard, unheard
    finally:
        loop.set_exception_handler(None)


# -- the service -------------------------------------------------------------------------------
async def test_a_stop_answers_calls_in_progress_refuses_new_ones_and_ends_streams_at_once(
        start_service: ServiceFactory, redis_url: str, tmp_path: Path) -> None:
    service, client = await start_service(estate=write_estate(tmp_path))
    await client.record_events([receipt("seed", "A", "DC", 100)])

    # An open ReserveStream that has had one batch answered and sends nothing more.
    more: asyncio.Queue[list[pb.ReserveRequest] | None] = asyncio.Queue()

    async def batches() -> AsyncIterator[list[pb.ReserveRequest]]:
        while (batch := await more.get()) is not None:
            yield batch

    stream = client.reserve_stream(batches())
    await more.put([pb.ReserveRequest(reservation_id="s1", lines=[pb.Line(sku="A", location="DC", quantity=1)])])
    first = await anext(stream)
    assert first.outcomes[0].response.state == pb.RESERVATION_STATE_HELD
    watch = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="market", snapshot=True))
    while (await watch.read()).kind != pb.WatchAvailabilityResponse.KIND_SNAPSHOT_END:
        pass

    # A reservation held up in progress (its log append waits on a pause of Redis writes, lifted once
    # the stop has refused and ended what it must: a pause of a fixed length, with the call awaited
    # for a fixed time, let a loaded machine answer it before the stop or stop before it came in).
    drain = service._servicer.drain
    with writes_paused(redis_url):
        in_progress = asyncio.ensure_future(client.reserve("p1", [("A", "DC", 1)]))
        await until(lambda: drain.active == 3, "the reservation in progress (with the stream and the watch)")
        assert not in_progress.done()

        stopping = asyncio.ensure_future(service.stop(grace_s=60))
        await until(lambda: drain.closing, "the stop begun")
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # the stub: AtpClient would retry UNAVAILABLE
            await client.stub.Reserve(pb.ReserveRequest(reservation_id="late", lines=[
                pb.Line(sku="A", location="DC", quantity=1)]))
        told = typed(refused.value).refusal
        assert (told.code, told.reason, told.message) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN", SHUTTING_DOWN)

        with pytest.raises(grpc.aio.AioRpcError) as stream_end:
            await anext(stream)
        assert said(stream_end.value) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
        with pytest.raises(grpc.aio.AioRpcError) as watch_end:
            await watch.read()
        assert said(watch_end.value) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")

    held = await in_progress  # answered, not cut off
    assert held.state == pb.RESERVATION_STATE_HELD
    # Well inside the 60 s grace: nothing was left to wait for once the held-up call was answered.
    await asyncio.wait_for(stopping, 15)
    await more.put(None)


async def test_until_closed_closed_by_its_reader_closes_the_generator_it_reads_at_once() -> None:
    """A watch's generator gives its ``max_watchers`` place back in its ``finally``. Left suspended at
    its ``yield`` when the reader went (a watcher gone while a message was sent), it ran only when the
    garbage collector found it: under churn, a reference cycle kept places counted and new watches
    were refused. Closing ``until_closed`` closes what it reads, at once."""
    ended: list[str] = []

    async def watch() -> AsyncIterator[int]:
        try:
            for n in range(3):
                yield n
        finally:
            ended.append("place given back")

    inner = watch()  # held here: only an explicit close can end it
    outer = Drain().until_closed(inner)
    assert await anext(outer) == 0
    await outer.aclose()
    assert ended == ["place given back"]


async def test_a_stop_ends_the_open_services_streams_at_once(start_service: ServiceFactory) -> None:
    """A ``Health/Watch`` (gRPC's client-side health checking keeps one open per channel) or a reflection
    stream kept open held every stop for its whole grace period, then was cut off: the drain ended the
    service's own streams only. Now a watch is told NOT_SERVING, then ends UNAVAILABLE SHUTTING_DOWN, and a
    reflection stream ends so too, at once."""
    service, client = await start_service()
    health = health_pb2_grpc.HealthStub(client.channel)
    watches = [health.Watch(health_pb2.HealthCheckRequest(service=name)) for name in ("", "no.such.Service")]
    assert [(await w.read()).status for w in watches] == [health_pb2.HealthCheckResponse.SERVING,
                                                          health_pb2.HealthCheckResponse.SERVICE_UNKNOWN]
    reflection = reflection_pb2_grpc.ServerReflectionStub(client.channel).ServerReflectionInfo()
    await reflection.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    assert (await reflection.read()).HasField("list_services_response")

    await asyncio.wait_for(service.stop(grace_s=60), 15)  # well inside the grace: nothing to wait for
    assert (await watches[0].read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    for call in (*watches, reflection):
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await call.read()
        assert said(ended.value) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")


async def test_a_health_watch_begun_during_a_stop_is_refused_without_a_status(start_service: ServiceFactory) -> None:
    """gRPC's client-side health checking starts a watch again at once when one ended after a status
    (after a backoff, from 1 s, when it ended without one). A watch begun during a stop was answered
    NOT_SERVING then ended, so every channel health-checking the instance came straight back, hundreds
    of watches a second each (420 in half a second from one channel), for as long as the stop waited for
    its calls in progress. Now it is refused UNAVAILABLE SHUTTING_DOWN without a status, as any new call
    is then; a watch open before the stop still gets its NOT_SERVING (the test above)."""
    service, client = await start_service()
    drain, booked, release = service._servicer.drain, asyncio.Event(), asyncio.Event()

    async def in_progress() -> None:  # a call in progress: the stop waits for it, and serves on meanwhile
        service._calls.enter("InProgress")
        booked.set()
        await release.wait()

    held = asyncio.ensure_future(in_progress())
    await booked.wait()
    stopping = asyncio.ensure_future(service.stop(grace_s=60))
    try:
        await until(lambda: drain.closing, "the stop begun")
        health = health_pb2_grpc.HealthStub(client.channel)
        for name in ("", "no.such.Service"):
            watch = health.Watch(health_pb2.HealthCheckRequest(service=name))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await watch.read()
            assert said(refused.value) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
        checked = await health.Check(health_pb2.HealthCheckRequest())  # probes are told, as before
        assert checked.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        release.set()
        await held
        await asyncio.wait_for(stopping, 15)


async def _hung_up(drain: Drain, inner: Any, read_started: asyncio.Event) -> None:
    """A watcher reading ``inner`` through ``drain.until_closed`` hangs up once its read has begun: its
    reading ends cancelled."""
    async def consume() -> None:
        async for _ in drain.until_closed(inner):
            pass

    consumer = asyncio.ensure_future(consume())
    await read_started.wait()
    consumer.cancel()  # the watcher hung up
    await asyncio.wait([consumer], timeout=30)
    assert consumer.cancelled()
