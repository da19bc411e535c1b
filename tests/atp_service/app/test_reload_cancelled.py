"""A ReloadEstate whose caller gives up (its deadline) while the desk's passes run: the reload still
lands whole (R8), not the desk on the new estate and the rest of the service on the old one. Real
Redis, real gRPC server; the passes held at an event until the call has been cancelled."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import ManualClock
from tests.atp_service.channel_helpers import fact, one_dc_market, write_estate
from tests.conftest import ServiceFactory
from tests.waiting import until

T = 1_700_000_000_000
ESTATE = one_dc_market(0, 1000.0)
PROTECTED = ESTATE.replace('type = "dc"\n', 'type = "dc"\nsafety_stock = 4\n')


async def test_r8_a_reload_whose_caller_gives_up_during_the_desks_passes_still_applies_the_new_safety_stock(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    """Defect: the desk swapped in the new estate, then its passes ran; the caller's deadline ending
    there (a large feed's passes take seconds) cancelled the reload before the service took the
    estate's safety stock and group policies: the desk curated the new file, the shards protected
    the old one's units (Q4) — new positions offered units the file protects, until another reload."""
    path = write_estate(tmp_path, ESTATE)
    service, client = await start_service(clock=ManualClock(T), estate=path)
    desk = service.channels
    assert desk is not None
    passes, reload = desk._reload_passes, desk.reload
    held, release = asyncio.Event(), asyncio.Event()
    reloading: list[asyncio.Task[object]] = []

    async def gated_passes() -> None:
        held.set()
        await release.wait()
        await passes()

    async def noted_reload(*args: Any) -> dict[str, int]:
        task = asyncio.current_task()
        assert task is not None
        reloading.append(task)
        return await reload(*args)

    desk._reload_passes = gated_passes  # type: ignore[method-assign]
    desk.reload = noted_reload  # type: ignore[method-assign,assignment]
    path.write_text(PROTECTED)
    call = asyncio.ensure_future(client.stub.ReloadEstate(pb.ReloadEstateRequest(), timeout=60))
    await until(held.is_set, "the reload's desk passes begun")
    call.cancel()  # the caller gives up: the server's handler is cancelled
    with pytest.raises((asyncio.CancelledError, grpc.aio.AioRpcError)):
        await call
    await until(lambda: reloading[0].cancelling() > 0, "the reload's handler cancelled")
    release.set()
    await until(lambda: reloading[0].done(), "the cancelled reload ended")
    await until(lambda: not service._reloading.locked(), "the reload's lock given back")
    await client.record_events([fact("count-1", "COUNT", "sku-new", "dc-1", 10, T - 1000)])
    [position] = await client.availability([("sku-new", "dc-1")])
    assert (position.safety_stock, position.available) == (4, 6)
    assert service.estate is desk.estate
