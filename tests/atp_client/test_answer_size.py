"""Messages past a size limit, against a real service on a real Redis: ``AtpClient`` reads every answer a
service may be set to send (its ``max_message_bytes`` raised past gRPC's own default receive limit, 4 MiB),
and a request larger than the service takes is raised as the invalid request it is, never as retryable."""

from __future__ import annotations

import grpc
import pytest

from atp_client import AtpError, InvalidRequest
from atp_client._output import EXIT_INVALID, in_doubt_after, refusal
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from reservation import Limits
from tests.atp_service.edge.test_api import T0, receipt
from tests.conftest import ServiceFactory

GRPC_DEFAULT_RECEIVE = 4 << 20
"""What a gRPC channel reads at most unless told otherwise."""


async def test_a_change_answered_past_grpcs_default_receive_limit_is_read_not_refused(
        start_service: ServiceFactory) -> None:
    """A service may be set to send answers up to 2 GiB (``ATP_MAX_MESSAGE_BYTES``, the remedy the docs give
    for answers too large). The client kept gRPC's own receive limit, 4 MiB: a RecordEvents answered in
    5 MB — its valid fact applied — was refused by the client itself, RESOURCE_EXHAUSTED "Received message
    larger than max" with no reason (``Retryable``; told refused, not in doubt, without gRPC's retries),
    and a retry with the same facts failed the same, for ever."""
    _, client = await start_service(clock=ManualClock(T0), max_message_bytes=16 << 20,
                                    limits=Limits(max_events_per_call=20_000))
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
