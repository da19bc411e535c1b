"""``AtpClient.reserve_stream`` against a service that answers every batch it was sent, then goes silent
(a SIGSTOP'd process, a network black hole, a proxy holding frames) without ending the stream: the caller, its
source done, waited for the stream's status with no bound, its ``async for`` never ending."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from atp_client import ACCEPTED_KEY, AtpClient, InvalidRequest, Retryable
from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_client.test_client import WAIT_S, _drain, _reserve_stream_server, item


class AnsweringThenSilent:
    """A ReserveStream (``handle``) that accepts the stream (unless ``accept`` is False: bare headers, as grpcio may
    hand over before a refusal's status), answers every batch, HELD, as it reads it, then never sends its status:
    ``ended`` once the call is over (cancelled by the client), ``batches`` the batches it read."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.batches: list[list[str]] = []
        self.ended = asyncio.Event()

    async def handle(self, requests: AsyncIterator[pb.ReserveStreamRequest],
                     context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[pb.ReserveStreamResponse]:
        try:
            await context.send_initial_metadata(((ACCEPTED_KEY, "1"),) if self.accept else ())
            async for request in requests:
                self.batches.append([r.reservation_id for r in request.reservations])
                yield pb.ReserveStreamResponse(outcomes=[pb.ReserveOutcome(
                    reservation_id=r.reservation_id,
                    response=pb.ReserveResponse(reservation_id=r.reservation_id, state=pb.RESERVATION_STATE_HELD))
                    for r in request.reservations])
            await asyncio.Event().wait()  # every batch answered, the caller's half-close read: no status, ever
        finally:
            self.ended.set()


def _held(answers: list[pb.ReserveStreamResponse]) -> list[list[str]]:
    return [[o.reservation_id for o in a.outcomes if o.response.state == pb.RESERVATION_STATE_HELD] for a in answers]


async def test_a_stream_whose_service_answers_every_batch_then_goes_silent_ends_with_every_answer() -> None:
    """The source ran out and every batch was answered; the service then sent no status. The caller waited for it
    for ever, though nothing was in doubt. Past ``timeout_s`` the client ends the call and the iteration, normally:
    every answer is in hand."""
    service = AnsweringThenSilent()
    async with _reserve_stream_server(service.handle) as port, AtpClient(f"127.0.0.1:{port}", timeout_s=0.5) as client:
        answers = await asyncio.wait_for(_drain(client.reserve_stream([[item("r-1")], [item("r-2")]])), WAIT_S)
        await asyncio.wait_for(service.ended.wait(), WAIT_S)  # the call itself ended, not left open
    assert _held(answers) == [["r-1"], ["r-2"]]


async def test_a_stream_with_a_batch_refused_unsent_and_every_other_answered_raises_that_refusal_if_no_status_comes(
        ) -> None:
    """A batch past ``max_batch_reservations`` is refused unsent once the batches before it are answered; the service,
    every batch answered, sent no status: the refusal was never raised, the caller waiting for ever. It is raised past
    ``timeout_s``, as it is once the status comes."""
    service = AnsweringThenSilent()
    answers: list[pb.ReserveStreamResponse] = []

    async def take() -> None:
        async for answer in client.reserve_stream([[item("r-1")], [item("big-1"), item("big-2")], [item("r-3")]]):
            answers.append(answer)

    async with _reserve_stream_server(service.handle) as port, \
            AtpClient(f"127.0.0.1:{port}", timeout_s=0.5, max_batch_reservations=1) as client:
        with pytest.raises(InvalidRequest) as refused:
            await asyncio.wait_for(take(), WAIT_S)
        await asyncio.wait_for(service.ended.wait(), WAIT_S)
    assert refused.value.refusal.metadata["limit"] == "max_batch_reservations", refused.value
    assert (_held(answers), service.batches) == ([["r-1"]], [["r-1"]])


async def test_a_stream_refused_after_bare_headers_with_no_status_ends_with_nothing_sent() -> None:
    """Bare headers (a refusal at the start is coming) and then no status: no batch is written, and the caller waited
    for the refusal for ever. Past ``timeout_s`` the stream ends as one not accepted: ``Retryable`` ``NOT_CONNECTED``,
    no batch sent — not an iteration ended normally, which would say every batch was answered."""
    service = AnsweringThenSilent(accept=False)
    async with _reserve_stream_server(service.handle) as port, AtpClient(f"127.0.0.1:{port}", timeout_s=0.5) as client:
        with pytest.raises(Retryable) as err:
            await asyncio.wait_for(_drain(client.reserve_stream([[item("r-1")]])), WAIT_S)
        await asyncio.wait_for(service.ended.wait(), WAIT_S)
    refusal = err.value.refusal
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAVAILABLE, "NOT_CONNECTED"), refusal
    assert service.batches == []
