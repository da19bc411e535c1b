"""scale_load's tally of a ReserveStream batch's outcomes, which scale.py's check compares with what the
service holds after the step: the units acknowledged held at each position (never fewer held: ``holds_lost``),
and those that may have been held (R7: never more held than both)."""

from __future__ import annotations

import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge.errors import rich_status
from benchmarks.scale_load import Tally, _held
from reservation import Moved, Reason, Unavailable


def _request(rid: str, sku: str) -> pb.ReserveRequest:
    return pb.ReserveRequest(reservation_id=rid, lines=[pb.Line(sku=sku, location="loc-00", quantity=1)])


def _held_answer(rid: str) -> pb.ReserveOutcome:
    return pb.ReserveOutcome(reservation_id=rid, response=pb.ReserveResponse(state=pb.RESERVATION_STATE_HELD))


def test_a_stream_item_refused_outright_is_not_counted_as_maybe_held() -> None:
    """``GROUP_MOVED`` applied nothing of the item (docs/API.md): a position holding its unit holds one no
    answer allowed. Before: every refused item was counted as in doubt, so the check let such a unit pass."""
    requests = [_request("held", "sku-a"), _request("moved", "sku-b"), _request("unknown", "sku-c")]
    in_doubt = Unavailable("the append's outcome is not known", Reason.OUTCOME_UNKNOWN)
    result = pb.ReserveStreamResponse(outcomes=[
        _held_answer("held"),
        pb.ReserveOutcome(reservation_id="moved", error=rich_status(Moved(3, "127.0.0.1:1"))),
        pb.ReserveOutcome(reservation_id="unknown", error=rich_status(in_doubt))])
    tally = Tally()
    assert _held(requests, result, tally) == [("sku-a", "loc-00")]
    assert tally.in_doubt == {"unknown": ("sku-c", "loc-00")}
    assert tally.errors == {"UNAVAILABLE:GROUP_MOVED": 1, "UNAVAILABLE:OUTCOME_UNKNOWN": 1}


def test_an_outcome_in_another_item_s_place_is_refused_not_counted_at_its_position() -> None:
    """The answers are matched to the requests by place; an outcome naming another id would put its unit at
    another position, and the check would find one hold lost and one too many where none was."""
    requests = [_request("r1", "sku-a"), _request("r2", "sku-b")]
    result = pb.ReserveStreamResponse(outcomes=[_held_answer("r2"), _held_answer("r1")])
    with pytest.raises(RuntimeError, match="'r2' in the place of 'r1'"):
        _held(requests, result, Tally())
