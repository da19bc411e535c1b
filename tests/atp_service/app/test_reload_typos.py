"""ReloadEstate of a file with a key the service does not read (a typo): refused whole, naming the
key, and the running channels keep their configuration (C1)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.channel_helpers import ESTATE, write_estate
from tests.atp_service.refusals import said
from tests.conftest import ServiceFactory

TYPOS = [
    (ESTATE.replace("buffer_units = 2", "bufer_units = 2"), "channels[0].bufer_units: unknown key"),
    (ESTATE.replace("[[channels]]", "[[channel]]"), "channel: unknown key"),
    (ESTATE.replace('id = "dc-1"', 'id = "dc-1"\nsafety_stok = 3'), "locations[0].safety_stok: unknown key"),
]


@pytest.mark.parametrize(("text", "message"), TYPOS)
async def test_a_reload_with_a_misspelt_key_is_refused_naming_it_and_nothing_changes(
        start_service: ServiceFactory, tmp_path: Path, text: str, message: str) -> None:
    """Defect: keys the service does not read were skipped. A reload with ``bufer_units`` gave the
    market channel no buffer (the 2 units held back were offered: sold, then not there); with
    ``[[channel]]`` it removed every channel - each feed stopped, every watch ended NOT_FOUND."""
    path = write_estate(tmp_path)
    service, client = await start_service(estate=path)
    path.write_text(text)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.stub.ReloadEstate(pb.ReloadEstateRequest())
    assert said(refused.value) == (grpc.StatusCode.FAILED_PRECONDITION, "ESTATE_UNUSABLE")
    assert message in (refused.value.details() or "")
    desk = service.channels
    assert desk is not None and sorted(desk.feeds) == ["market", "pickup", "web"]
    assert desk.estate.channels["market"].rules.buffer_units == 2
