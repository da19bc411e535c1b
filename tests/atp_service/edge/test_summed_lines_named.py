"""A partial Release or Fulfil whose request names a position in several lines (summed before the check, R1) and is
refused for one of its lines, through the real gRPC server and Redis: the line at fault is named by its place in the
request, as sent, never by its place among the summed lines."""

from __future__ import annotations

import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.edge.test_api import stocked
from tests.atp_service.refusals import fields_of, refused
from tests.conftest import ServiceFactory


@pytest.mark.parametrize("operation", ["release", "fulfill"])
async def test_a_line_refused_after_lines_summed_is_named_by_its_place_in_the_request_R1(
        start_service: ServiceFactory, operation: str) -> None:
    """Defect: the request's lines were summed per position (R1), first seen first, before the engine checked them,
    and a refusal named the line by its place among the summed lines: ``A``, ``A``, ``B`` (2 more of ``B`` than the
    reservation holds there) was refused naming ``lines[1].quantity`` — the request's second ``A`` line, not at
    fault. The line is named by its place in the request (a position's first line there, for its lines' sum), the
    rest of the answer as before; nothing changed."""
    _, client = await stocked(start_service)
    await client.reserve("r", [("A", "S1", 2), ("B", "S1", 1)], ttl_seconds=60)
    if operation == "fulfill":
        await client.confirm("r")
    before = await client.get_reservation("r")
    change = getattr(client, operation)
    refusal = await refused(change("r", [("A", "S1", 1), ("A", "S1", 1), ("B", "S1", 3)], "three-lines"))
    assert (refusal.reason, fields_of(refusal)) == ("INVALID_FIELD", ["lines[2].quantity"]), refusal
    assert refusal.message.startswith("lines[2].quantity: 3 exceeds the 1 units"), refusal
    refusal = await refused(change("r", [("A", "S1", 1), ("A", "S1", 1), ("D", "DC", 1)], "not-a-line"))
    assert (fields_of(refusal), refusal.message.split(":")[0]) == (["lines[2]"], "lines[2]"), refusal
    assert await client.get_reservation("r") == before
    done = await change("r", [("A", "S1", 1), ("A", "S1", 1)], "summed")
    assert [line.released + line.fulfilled for line in done.lines] == [2, 0]
    assert done.state == (pb.RESERVATION_STATE_CONFIRMED if operation == "fulfill" else pb.RESERVATION_STATE_HELD)
