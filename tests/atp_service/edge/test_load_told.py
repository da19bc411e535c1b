"""What a LoadCounts refused by one owner after other rows loaded tells its caller (pure: the
refusal and the merged answer are built here as the edge receives them)."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge.errors import DETAILS_KEY, DOMAIN
from atp_service.edge.forward import Relayed
from atp_service.edge.load import _loaded_before_refusal, _told
from reservation import Reason, Unavailable


def _owner_refusal(loaded: int, applied: int, of: int) -> Relayed:
    """An owner's refusal of its part after ``loaded`` of its rows loaded, as its own edge words it."""
    message = (f"shard 3: capacity reached; nothing of this part applied; {loaded} of the block's {of} valid rows "
               f"were loaded by other shards ({applied} applied) and {of - loaded} were refused or are in doubt: "
               "resending the whole block is safe (E8: the rows loaded count as duplicate)")
    status = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message=message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(
        reason="CAPACITY_REACHED", domain=DOMAIN,
        metadata={"limit": "max_positions_per_shard", "rows_loaded": str(loaded), "rows_applied": str(applied),
                  "rows_not_loaded": str(of - loaded)}))
    return Relayed(grpc.StatusCode.RESOURCE_EXHAUSTED, message, ((DETAILS_KEY, status.SerializeToString()),))


def test_rows_an_owner_loaded_before_refusing_the_rest_are_counted_once() -> None:
    """Here one row loaded; the other owner loaded one of its two rows and refused the other. The
    caller was told 1 loaded and 2 not (a row in the ATP said not loaded), with two notes of two
    different counts in one message."""
    refusal = _owner_refusal(loaded=1, applied=1, of=2)
    assert _loaded_before_refusal(refusal) == (1, 1)
    told = _told(refusal, pb.LoadCountsResponse(applied=1), 3, *_loaded_before_refusal(refusal))
    assert isinstance(told, Relayed)
    status = status_pb2.Status.FromString(dict(told.trailers)[DETAILS_KEY])
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert (info.metadata["rows_loaded"], info.metadata["rows_applied"], info.metadata["rows_not_loaded"]) == (
        "2", "2", "1")
    assert info.metadata["limit"] == "max_positions_per_shard"  # the owner's own reason kept
    assert told.details.count("valid rows were loaded") == 1 and "2 of the block's 3 valid rows" in told.details
    assert told.details.startswith("shard 3: capacity reached; nothing of this part applied")


def test_an_owner_refusal_that_loaded_nothing_adds_nothing() -> None:
    refusal = Relayed(grpc.StatusCode.UNAVAILABLE, "owner unreachable", ())
    assert _loaded_before_refusal(refusal) == (0, 0)
    assert _told(refusal, pb.LoadCountsResponse(), 2) is refusal  # nothing loaded anywhere: told as it is


def test_one_shard_refusal_told_to_two_calls_tells_each_only_its_own_rows() -> None:
    """Defect: a shard answers every message waiting behind an append in doubt with one refusal
    (``refuse_all``), so two LoadCounts calls waiting there hold the same exception, and ``_told``
    wrote each call's note into it: the second caller read both calls' notes (two different counts
    of loaded rows in one message) and the first caller's words were changed under it. Now each
    call is told its own copy."""
    shared = Unavailable("shard 1: outcome unknown; nothing applied", Reason.OUTCOME_UNKNOWN)
    first = _told(shared, pb.LoadCountsResponse(applied=1), 2)
    second = _told(shared, pb.LoadCountsResponse(applied=3), 5)
    assert isinstance(first, Unavailable) and isinstance(second, Unavailable)
    assert first.message.count("valid rows were loaded") == 1 and "1 of the block's 2 valid rows" in first.message
    assert second.message.count("valid rows were loaded") == 1 and "3 of the block's 5 valid rows" in second.message
    assert (first.metadata["rows_loaded"], second.metadata["rows_loaded"]) == ("1", "3")
    assert shared.message == "shard 1: outcome unknown; nothing applied" and not shared.metadata
