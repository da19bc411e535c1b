"""No silent death of the service's own background tasks: the channel desk and its look for keys to
publish again, the input-stream reader and the owner check. One that ends while the service runs is
said (log event, health NOT_SERVING) and the service stops to be restarted (exit status 4), which
rebuilds it from Redis."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest

from atp_service import AtpService
from atp_service.channels import restamp
from atp_service.channels.restamp import Restamps
from tests.atp_service.app.test_health_truth import not_serving, status
from tests.atp_service.channel_helpers import write_estate
from tests.atp_service.edge.test_api import receipt
from tests.conftest import STOP_LIMIT_S, ServiceFactory
from tests.waiting import until


async def _failed_loudly(service: AtpService, client_channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture,
                         task: str) -> None:
    """The service was told to stop, says NOT_SERVING and logged why, naming ``task``."""
    await until(lambda: service.failed.is_set(), f"the service told to stop after {task} failed", timeout_s=30)
    await until(lambda: not_serving(status(client_channel)), "health NOT_SERVING")  # set by a task of its own
    said = [r for r in caplog.records if getattr(r, "event", None) == "stopping"]
    assert [(r.why, r.task) for r in said] == [("task_failed", task)]  # type: ignore[attr-defined]
    assert said[0].exc_info is not None  # the traceback, for the bug report


async def test_a_channel_desk_that_fails_stops_the_service_to_be_restarted(
        start_service: ServiceFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Defect: the desk's loop caught storage errors only; a bug ended its task unseen — no channel
    published anything more (stock-outs included) while health said SERVING, nothing was logged
    and no metric moved — and the service's stop then raised the bug, skipping the final snapshots."""
    service, client = await start_service(estate=write_estate(tmp_path))
    desk = service.channels
    assert desk is not None

    async def bug() -> None:
        raise RuntimeError("a bug in the desk's round")

    desk.run_round = bug  # type: ignore[method-assign]
    caplog.set_level(logging.ERROR, logger="atp_service")
    desk.poke()
    await _failed_loudly(service, client.channel, caplog, "channel-desk")


async def test_an_input_stream_reader_that_fails_stops_the_service_to_be_restarted(
        start_service: ServiceFactory, caplog: pytest.LogCaptureFixture) -> None:
    """Defect: the reader's loop caught Redis errors only; a bug ended its task unseen — no input
    fact was read again (nor pending: ``atp_ingest_pending`` stayed flat, so no alert) while health
    said SERVING."""
    service, client = await start_service(ingest_block_ms=20)
    ingestor = service.ingestor
    assert ingestor is not None

    async def bug() -> None:
        raise RuntimeError("a bug in the reader")

    caplog.set_level(logging.ERROR, logger="atp_service")
    ingestor.step = bug  # type: ignore[method-assign]
    await _failed_loudly(service, client.channel, caplog, "ingest")


async def test_an_owner_check_that_fails_stops_the_service_to_be_restarted(
        start_service: ServiceFactory, caplog: pytest.LogCaptureFixture) -> None:
    service, client = await start_service(owner_check_s=0.01)
    store = service._log
    assert store is not None

    async def bug(group: int | None = None) -> bool:
        raise ValueError("invalid literal for int() with base 10: b'garbage'")

    caplog.set_level(logging.ERROR, logger="atp_service")
    store.still_owner = bug  # type: ignore[method-assign]
    await _failed_loudly(service, client.channel, caplog, "owner-check")


async def test_a_look_for_keys_to_publish_again_that_fails_stops_the_service_to_be_restarted(
        start_service: ServiceFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect: the desk's look for keys publishers name (``channel-restamps``, C3, C4) was watched by nothing: a bug
    ended its task unseen — keys a publisher delivered at versions Redis lost stayed at those values at their
    destinations for good while health said SERVING — and the service's stop then raised the bug out of the desk's
    stop, skipping every shard's stop and final snapshot (``atp-service serve``: a traceback, exit status 1)."""
    async def bug(self: Restamps) -> int:
        raise RuntimeError("a bug in the look")

    monkeypatch.setattr(restamp, "POLL_S", 0.01)
    monkeypatch.setattr(Restamps, "look", bug)
    caplog.set_level(logging.ERROR, logger="atp_service")
    service, client = await start_service(estate=write_estate(tmp_path))
    await client.record_events([receipt("stock", "A", "dc-1", 5)])  # a shard with a final snapshot to write
    await _failed_loudly(service, client.channel, caplog, "channel-restamps")
    await asyncio.wait_for(service.stop(grace_s=0.1), STOP_LIMIT_S)  # the failure was said: the stop goes on
    assert service.engine is not None and all(actor._stopping for actor in service.engine.actors)
    assert service.channels is not None and service.channels.task is not None and service.channels.task.done()
    assert max(actor._checkpoints._seq for actor in service.engine.actors) == 1  # the final snapshot written
