"""``atp_client.typed``: each failed call's class, from its status alone (pure logic)."""

from __future__ import annotations

import grpc
from grpc.aio import Metadata

from atp_client import AtpError, InvalidRequest, Retryable, typed
from atp_client._errors import CORE_LOST_CALL


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
