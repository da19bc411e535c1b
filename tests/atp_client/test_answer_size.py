"""``AtpClient`` reads every answer a service may be set to send: against a real service on a real
Redis whose ``max_message_bytes`` is raised past gRPC's own default receive limit (4 MiB)."""

from __future__ import annotations

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
