"""What a caller is told when the owner's answer to its forwarded call is one of gRPC's own ends
(``forward.refusal_of``): a change lost in the owner's hands is in doubt (R7), a read is passed on."""

from __future__ import annotations

import grpc
import pytest
from grpc.aio import Metadata

from atp_service.edge.forward import Relayed, refusal_of
from reservation import Reason, Unavailable


def _ended(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, Metadata(), Metadata(), details, None)


@pytest.mark.parametrize("code", [grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL])
def test_a_change_the_owner_s_side_ended_in_hand_is_in_doubt_R7(code: grpc.StatusCode) -> None:
    """CANCELLED too: the owner's stop cancels calls past its grace, and a peer channel closed from the pool
    cancels those on it. Passed on bare, a caller that never cancelled heard CANCELLED for a change that may
    have been made, as if nothing had been (``atpctl`` and gRPC's retry read it so)."""
    told = refusal_of("Reserve", "10.0.0.2:50051", _ended(code, "Cancelled on the server side"))
    assert isinstance(told, Unavailable) and told.reason == Reason.OUTCOME_UNKNOWN


def test_a_read_the_owner_s_side_ended_is_passed_on_as_it_came() -> None:
    told = refusal_of("GetAvailability", "10.0.0.2:50051", _ended(grpc.StatusCode.CANCELLED, "Cancelled"))
    assert isinstance(told, Relayed)


def test_a_change_never_sent_is_not_in_doubt() -> None:
    told = refusal_of("Reserve", "10.0.0.2:50051", _ended(grpc.StatusCode.UNAVAILABLE,
                                                          "failed to connect to all addresses; last error: refused"))
    assert isinstance(told, Relayed)
