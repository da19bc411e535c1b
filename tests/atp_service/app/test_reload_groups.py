"""ReloadEstate and the location groups a Reserve names: a group that would oversell is refused
whole, naming its key, and the groups in force stay those of the last good file (R2)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.channel_helpers import ESTATE, fact, write_estate
from tests.atp_service.refusals import said
from tests.conftest import ServiceFactory

T = 1_700_000_000_000
TWICE = '["store-2", "store-1", "store-2"]'


async def test_a_reload_naming_a_group_member_twice_is_refused_and_nothing_is_oversold(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    """Defect: a group listing a store twice (a hand-edited list) loaded, and a Reserve naming it
    counted that store's stock twice: 7 units held at a store of 5 (available -2), oversold."""
    path = write_estate(tmp_path)
    service, client = await start_service(estate=path)
    await client.record_events([fact("c1", "COUNT", "sku-a", "store-1", 0, T),
                                fact("c2", "COUNT", "sku-a", "store-2", 5, T),
                                fact("c3", "COUNT", "sku-a", "store-3", 0, T)])
    path.write_text(ESTATE.replace('["store-2", "store-1", "store-3"]', TWICE))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.stub.ReloadEstate(pb.ReloadEstateRequest())
    assert said(refused.value) == (grpc.StatusCode.FAILED_PRECONDITION, "ESTATE_UNUSABLE")
    assert "groups.north-first: location 'store-2' is listed twice" in (refused.value.details() or "")
    assert service.estate.groups["north-first"] == ("store-2", "store-1", "store-3")  # the old file's, whole
    resp = await client.reserve("r-1", [("sku-a", "north-first", 7)], channel="web")
    assert resp.state == pb.RESERVATION_STATE_REJECTED and resp.lines[0].available == 5
    [position] = await client.availability([("sku-a", "store-2")])
    assert position.available == 5
