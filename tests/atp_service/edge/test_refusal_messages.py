"""FAILED_PRECONDITION says what is wrong once, for machines (the reason) and for people (the
message): an estate problem as ``estate: FILE: key: problem``, a conflicting resolution as the
reservation's current state (R3)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from atp_client import timestamp, typed
from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.channel_helpers import ESTATE, write_estate
from tests.conftest import ServiceFactory
from tests.ports import held_port


async def refusal(call: object) -> tuple[grpc.StatusCode, str, str]:
    """(status, reason, message) of a refused call."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    told = typed(err.value).refusal
    return told.code, told.reason, told.message


async def test_an_estate_that_does_not_load_is_named_once(start_service: ServiceFactory, tmp_path: Path) -> None:
    path = write_estate(tmp_path)
    _, client = await start_service(estate=path)
    path.write_text(ESTATE.replace("buffer_units = 2", "buffer_percent = 200.0", 1))
    assert await refusal(client.stub.ReloadEstate(pb.ReloadEstateRequest())) == (
        grpc.StatusCode.FAILED_PRECONDITION, "ESTATE_UNUSABLE",
        f"estate: {path}: channels[0].buffer_percent: must be within [0, 100]")
    path.write_text("[[locations]\nid=")
    code, reason, details = await refusal(client.stub.ReloadEstate(pb.ReloadEstateRequest()))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ESTATE_UNUSABLE")
    assert details.startswith(f"estate: {path}: not valid TOML: ") and details.count(str(path)) == 1


async def test_calls_that_need_channels_say_none_are_configured(start_service: ServiceFactory) -> None:
    _, client = await start_service()
    watch = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="web"))
    assert await refusal(watch.read()) == (grpc.StatusCode.FAILED_PRECONDITION, "ESTATE_UNUSABLE",
                                           "estate: no channels are configured (start with --estate FILE)")
    assert await refusal(client.stub.ReloadEstate(pb.ReloadEstateRequest())) == (
        grpc.StatusCode.FAILED_PRECONDITION, "ESTATE_UNUSABLE",
        "estate: channels were off at start; restart the service to turn them on")


async def test_a_refused_reload_changes_nothing(start_service: ServiceFactory, tmp_path: Path) -> None:
    """A reload is all or nothing: refused (channels were off at start), the new file's safety
    defaults are not applied either."""
    path = tmp_path / "estate.toml"
    path.write_text('[[locations]]\nid = "s1"\ntype = "store"\n')
    service, client = await start_service(estate=path)
    assert service.channels is None and service.engine is not None
    path.write_text('safety_stock = {store = 3}\n[[locations]]\nid = "s1"\ntype = "store"\n'
                    '[[channels]]\nname = "web"\nsells_from = ["s1"]\n')
    assert (await refusal(client.stub.ReloadEstate(pb.ReloadEstateRequest())))[:2] == (
        grpc.StatusCode.FAILED_PRECONDITION, "ESTATE_UNUSABLE")
    await client.record_events([pb.Fact(event_id="r1", source="wms", kind=pb.FACT_KIND_RECEIPT, sku="A", location="s1",
                                        quantity=5, event_time=timestamp(1))])
    (a,) = await client.availability([("A", "s1")])
    assert a.safety_stock == 0 and a.available == 5  # the refused file's default of 3 was not applied


async def test_a_conflicting_resolution_names_the_current_state(start_service: ServiceFactory) -> None:
    _, client = await start_service()
    await client.record_events([pb.Fact(event_id="c1", source="wms", kind=pb.FACT_KIND_COUNT, sku="A", location="L",
                                        quantity=5, event_time=timestamp(1))])
    assert (await client.reserve("r1", [("A", "L", 1)])).state == pb.RESERVATION_STATE_HELD
    await client.release("r1")
    assert await refusal(client.confirm("r1")) == (
        grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_RELEASED",
        "reservation is RELEASED: only a HELD reservation can be confirmed")


async def test_a_leased_process_says_channels_are_not_served_with_leases(start_service: ServiceFactory) -> None:
    """Several processes on one keyspace serve no channel feeds yet, and refuse to start with an
    estate: a caller is not told to start one with --estate, which that start would refuse."""
    _, client = await start_service(ownership="leases", port=held_port(), input_streams=())
    watch = client.stub.WatchAvailability(pb.WatchAvailabilityRequest(channel="web"))
    assert await refusal(watch.read()) == (
        grpc.StatusCode.FAILED_PRECONDITION, "ESTATE_UNUSABLE",
        "estate: no channels here: channel feeds are not served with ownership=leases yet")
    assert await refusal(client.stub.ReloadEstate(pb.ReloadEstateRequest())) == (
        grpc.StatusCode.FAILED_PRECONDITION, "ESTATE_UNUSABLE",
        "estate: nothing to reload: channel feeds are not served with ownership=leases yet")
