"""Reserve against a location group over gRPC: the channel's strategy picks, the answer says where."""

from __future__ import annotations

from pathlib import Path

from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.channel_helpers import fact, write_estate
from tests.conftest import ServiceFactory

T = 1_700_000_000_000


async def test_group_reservation_split_across_two_stores(start_service: ServiceFactory, tmp_path: Path) -> None:
    _, client = await start_service(estate=write_estate(tmp_path))
    await client.record_events([fact("c1", "COUNT", "sku-a", "store-1", 3, T),
                                fact("c2", "COUNT", "sku-a", "store-2", 2, T),
                                fact("c3", "COUNT", "sku-a", "store-3", 1, T)])
    # web: strategy "priority" over north-first = store-2, store-1, store-3
    resp = await client.reserve("r-web", [("sku-a", "north-first", 4)], channel="web")
    assert resp.state == pb.RESERVATION_STATE_HELD
    [line] = resp.lines
    assert (line.location, line.requested, line.granted) == ("north-first", 4, 4)
    assert [(a.location, a.quantity) for a in line.allocations] == [("store-2", 2), ("store-1", 2)]
    rec = await client.get_reservation("r-web")
    assert [(ln.location, ln.held) for ln in rec.lines] == [("store-2", 2), ("store-1", 2)]
    found = await client.availability([("sku-a", "store-1"), ("sku-a", "store-2"), ("sku-a", "store-3")])
    assert [p.available for p in found] == [1, 0, 1]

    # pickup: strategy "most_available" over the same group; then a group that cannot give enough
    resp = await client.reserve("r-pick", [("sku-a", "stores", 2)], channel="pickup")
    assert [(a.location, a.quantity) for a in resp.lines[0].allocations] == [("store-1", 1), ("store-3", 1)]
    refused = await client.reserve("r-none", [("sku-a", "stores", 1)], channel="pickup")
    assert refused.state == pb.RESERVATION_STATE_REJECTED and refused.lines[0].outcome == pb.LINE_OUTCOME_INSUFFICIENT
    assert refused.lines[0].location == "stores" and not refused.lines[0].allocations

    replay = await client.reserve("r-web", [("sku-a", "north-first", 4)], channel="web")
    assert replay.replayed and [(a.location, a.quantity) for a in replay.lines[0].allocations] == [
        ("store-2", 2), ("store-1", 2)]
