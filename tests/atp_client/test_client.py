"""``AtpClient`` against a real service on a real Redis: what a caller of ``reserve_stream`` is
told about every reservation it hands the stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing

import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory

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
