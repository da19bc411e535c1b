"""``atp_client.typed``: each failed call's class, from its status alone (pure logic)."""

from __future__ import annotations

import grpc
from grpc.aio import Metadata

from atp_client import AtpError, Conflict, InvalidRequest, Retryable, typed
from atp_client._errors import CORE_LOST_CALL
from atp_client._output import EXIT_CONFLICT, in_doubt_after, refusal
from atp_service.edge.errors import trailers_of
from reservation import GIVEN_UP, Reason, ResourceExhausted


def failed(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, Metadata(), Metadata(), details, None)


def test_a_stream_grpcio_lost_is_retryable_and_any_other_internal_is_not() -> None:
    lost = typed(failed(grpc.StatusCode.INTERNAL, CORE_LOST_CALL))
    assert isinstance(lost, Retryable) and lost.code() == grpc.StatusCode.INTERNAL
    other = typed(failed(grpc.StatusCode.INTERNAL, "something the server said"))
    assert type(other) is AtpError


def test_unavailable_is_retryable_and_typed_keeps_a_typed_error() -> None:
    unavailable = typed(failed(grpc.StatusCode.UNAVAILABLE, "shard 3: storage unreachable"))
    assert isinstance(unavailable, Retryable)
    assert typed(unavailable) is unavailable


def test_a_request_the_service_refused_unread_for_its_size_is_invalid_and_an_answer_too_large_here_is_not() -> None:
    unread = typed(failed(grpc.StatusCode.RESOURCE_EXHAUSTED, "SERVER: Received message larger than max (9 vs. 8)"))
    assert isinstance(unread, InvalidRequest) and unread.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    answer = typed(failed(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          "Stream removed (CLIENT: Received message larger than max (9 vs. 8))"))
    assert isinstance(answer, Retryable)  # the call may have been made: in doubt, retried with the same ids
    shed = typed(failed(grpc.StatusCode.RESOURCE_EXHAUSTED, "the queue is full"))
    assert isinstance(shed, Retryable)


def refused_so(exc: ResourceExhausted) -> grpc.aio.AioRpcError:
    """The failed call a caller gets for the service's refusal ``exc``: its status and trailing metadata."""
    return grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, Metadata(), Metadata(*trailers_of(exc, 10)),
                                exc.message, None)


def test_an_order_given_up_is_a_decision_on_its_id_not_retryable() -> None:
    """An order spanning groups refused CAPACITY_REACHED at a part is given up whole, and a retry of its id answers
    the same refusal for good (R5; docs/API.md: reserve again under a new id). The service stopped telling it
    "retry in a second" (RetryInfo, gRPC's retry); the client still raised it ``Retryable`` — "retry with the
    same ids", its README says — so a caller asked again for hours, until retention forgot the order, and
    atpctl exited 6 ("retry later, same ids") saying, its retries on, that the order may have been made."""
    given_up = typed(refused_so(ResourceExhausted("shard 1: full", Reason.CAPACITY_REACHED, metadata={
        "limit": "max_live_reservations_per_shard", GIVEN_UP: "true"})))
    assert isinstance(given_up, Conflict), repr(given_up)
    assert (given_up.code(), given_up.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "CAPACITY_REACHED")
    assert refusal(given_up)[0] == EXIT_CONFLICT
    assert not in_doubt_after(given_up, retried=True)
    full = typed(refused_so(ResourceExhausted("shard 1: full", Reason.CAPACITY_REACHED, metadata={
        "limit": "max_live_reservations_per_shard"})))  # a one-group Reserve: room frees as reservations end
    assert isinstance(full, Retryable) and full.retry_delay_s is not None


def test_a_status_trailer_that_is_not_a_status_is_typed_by_its_code_not_raised() -> None:
    """A proxy or another server in the path may send ``grpc-status-details-bin`` bytes that are no
    ``google.rpc.Status``: the error is still typed (by its code, with gRPC's message), never a DecodeError."""
    error = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, Metadata(),
                                 Metadata(("grpc-status-details-bin", b"\xff\xff no status")), "upstream reset", None)
    refused = typed(error)
    assert isinstance(refused, Retryable) and refused.reason == "" and refused.details() == "upstream reset"
