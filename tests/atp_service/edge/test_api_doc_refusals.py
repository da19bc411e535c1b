"""docs/API.md's table of RPCs says how each can be refused: a refusal the service gives for a request's own
fault is one the table (or the paragraph after it, for every RPC) names for that RPC — its reason, and the limit
its ``ErrorInfo`` names. A client that handles what the contract lists meets no other."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.channel_helpers import write_estate
from tests.atp_service.refusals import refused
from tests.conftest import ServiceFactory

LONG = "x" * 129  # past max_id_length (128 bytes)
LINE = pb.Line(sku="A", location="S1", quantity=1)
LINES = [pb.Line(sku=f"s{n}", location="S1", quantity=1) for n in range(201)]  # past max_lines (200)
Ask = Callable[[AtpClient, str], Any]
# RPC -> the call with ``id`` as the id it names
CALLS: dict[str, Ask] = {
    "Reserve": lambda c, id: c.stub.Reserve(pb.ReserveRequest(reservation_id=id, lines=[LINE])),
    "Confirm": lambda c, id: c.stub.Confirm(pb.ConfirmRequest(reservation_id=id)),
    "Release": lambda c, id: c.stub.Release(pb.ReleaseRequest(reservation_id=id)),
    "Fulfill": lambda c, id: c.stub.Fulfill(pb.FulfillRequest(reservation_id=id)),
    "GetReservation": lambda c, id: c.stub.GetReservation(pb.GetReservationRequest(reservation_id=id)),
    "GetAvailability": lambda c, id: c.stub.GetAvailability(pb.GetAvailabilityRequest(
        keys=[pb.PositionKey(sku=id, location="S1")])),
    "LoadCounts": lambda c, id: c.stub.LoadCounts(pb.LoadCountsRequest(source=id)),
    "ExplainAvailability": lambda c, id: c.stub.ExplainAvailability(pb.ExplainAvailabilityRequest(
        sku=id, location="S1")),
    "SetSafetyStock": lambda c, id: c.stub.SetSafetyStock(pb.SetSafetyStockRequest(sku=id, location="S1")),
    "WatchAvailability": lambda c, id: c.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel=id)).read(),
}
FAULTS: dict[str, dict[str, Callable[[AtpClient], Any]]] = {
    "empty id": {rpc: lambda c, ask=ask: ask(c, "") for rpc, ask in CALLS.items()},
    "id past max_id_length": {rpc: lambda c, ask=ask: ask(c, LONG) for rpc, ask in CALLS.items()},
    "lines past max_lines": {
        "Reserve": lambda c: c.stub.Reserve(pb.ReserveRequest(reservation_id="r", lines=LINES)),
        "Release": lambda c: c.stub.Release(pb.ReleaseRequest(reservation_id="r", lines=LINES, operation_id="op")),
        "Fulfill": lambda c: c.stub.Fulfill(pb.FulfillRequest(reservation_id="r", lines=LINES, operation_id="op")),
    },
}


def documented(api: str) -> dict[str, str]:
    """Each RPC's refusals as the table of RPCs says them (``as `Confirm```: that row's too; ``availability``:
    the list of those), with the paragraph after the table, which holds for every RPC."""
    section = api.split("\n## RPCs\n", 1)[1]
    end = section.index("\nEvery RPC can also be refused")
    rows = dict(re.findall(r"^\| `(\w+)` \| [^|]* \| (.*) \|$", section[:end], re.M))
    every = section[end:section.index("\n**A stream whose caller")]
    availability = every[every.index('"Availability" above'):]
    out: dict[str, str] = {}
    for name in rows:
        text, seen = rows[name], {name}
        while (same := re.search(r"\bas `(\w+)`, and", text)) and same.group(1) not in seen:  # "as `Confirm`, and"
            seen.add(same.group(1))
            text = text.replace(same.group(0), rows[same.group(1)], 1)
        out[name] = text + (availability if "availability" in text else "") + every
    return out


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_refusal_for_an_id_at_fault_is_one_the_api_doc_lists_for_the_rpc(
        start_service: ServiceFactory, project_root: Path, tmp_path: Path, fault: str) -> None:
    rows = documented((project_root / "docs" / "API.md").read_text())
    _, client = await start_service(estate=write_estate(tmp_path))
    unlisted = {}
    for rpc, ask in FAULTS[fault].items():
        refusal = await refused(ask(client))
        assert refusal.reason in ("INVALID_FIELD", "LIMIT_EXCEEDED"), (rpc, refusal)
        limit = refusal.metadata.get("limit", "")
        if f"`{refusal.reason}`" not in rows[rpc] or (limit and f"`{limit}`" not in rows[rpc]):
            unlisted[rpc] = (refusal.reason, limit)
    assert not unlisted, f"refusals docs/API.md does not list for the RPC: {unlisted}"
