"""A stop runs every one of its steps whatever an earlier one raised: a bug in one part's stop (the
servicer's close, the channel desk's, a lease hand-over) must not leave every shard unstopped and
unsnapshotted and Redis's connections open. Each failure is said (``stop_step_failed``, with its
traceback) and the stop raises once its last step has run (``atp-service serve``: exit status 1)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import pytest

from atp_client import AtpClient
from atp_service import AtpService
from atp_service.app import shutdown
from atp_service.app.stop_steps import StopFailed
from tests.atp_service.channel_helpers import write_estate
from tests.atp_service.edge.test_api import receipt
from tests.conftest import STOP_LIMIT_S
from tests.conftest import test_config as make_config


async def shut_down_here(service: AtpService) -> int:
    """``atp-service serve``'s stop of ``service`` (``shutdown.shut_down``), bounded; its exit status. The signal
    handlers it sets (a second signal exits at once) are given back to the test process however it ends."""
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(shutdown.shut_down(service.config, service, shutdown.StopRequest(None)),
                                      STOP_LIMIT_S)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)  # the test process's own again


def service_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The lines the service's own logger wrote (its stop's, ``atp_service``), in order."""
    return [r for r in caplog.records if r.name == "atp_service"]


async def test_a_step_of_the_stop_that_raises_leaves_the_later_steps_run(
        redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Defect: ``_stop`` ran its steps one after another, so an exception from an early one (here the
    servicer's close, then the channel desk's) skipped every step after it: no shard was stopped nor
    snapshotted, the desk's and the log's Redis connections were left open."""
    service = AtpService(make_config(estate=write_estate(tmp_path)), redis_url)
    await service.start()
    client = AtpClient(f"127.0.0.1:{service.port}")
    try:
        await client.record_events([receipt("stock", "A", "dc-1", 5)])  # a shard with a final snapshot to write
    finally:
        await client.close()
    assert service.engine is not None and service.channels is not None and service._log is not None

    async def bug() -> None:
        raise RuntimeError("a bug in the servicer's close")

    async def another() -> None:
        raise ValueError("a bug in the desk's stop")

    service._servicer.aclose = bug  # type: ignore[method-assign]
    service.channels.stop = another  # type: ignore[method-assign]
    caplog.set_level(logging.ERROR, logger="atp_service")
    with pytest.raises(StopFailed) as failed:
        await asyncio.wait_for(service.stop(grace_s=0.1), STOP_LIMIT_S)
    assert [type(e) for e in failed.value.exceptions] == [RuntimeError, ValueError]
    assert all(actor._stopping for actor in service.engine.actors)
    assert max(actor._checkpoints._seq for actor in service.engine.actors) == 1  # the final snapshot written
    said = [r for r in caplog.records if getattr(r, "event", None) == "stop_step_failed"]
    assert [(r.step, r.exc_info is not None) for r in said] == [  # type: ignore[attr-defined]
        ("servicer", True), ("channel-desk", True)]


@pytest.mark.parametrize("failed", [False, True])
async def test_a_stop_a_step_of_which_raised_exits_1_unless_a_reason_to_stop_has_its_own(
        redis_url: str, failed: bool, caplog: pytest.LogCaptureFixture) -> None:
    """``atp-service serve``: exit status 1 (not 0, a clean stop; not a traceback), or the status of why the
    service stopped (a failed shard: 4), which says more than how its stop went."""
    service = AtpService(make_config(), redis_url)
    await service.start()

    async def bug() -> None:
        raise RuntimeError("a bug in the servicer's close")

    service._servicer.aclose = bug  # type: ignore[method-assign]
    caplog.set_level(logging.INFO, logger="atp_service")
    if failed:
        service.failed.set()
    assert await shut_down_here(service) == (shutdown.EXIT_SHARD_FAILED if failed else 1)
    assert service.engine is not None and all(actor._stopping for actor in service.engine.actors)
    last = service_lines(caplog)[-1]  # not the clean ``stopped``: a step failed
    assert (last.levelname, getattr(last, "event", None), getattr(last, "why", None)) == (
        "WARNING", "stopped_unclean", "steps_failed"), last.getMessage()
    assert "1 step(s) of the stop failed" in last.getMessage()


async def test_a_clean_stop_ends_its_log_saying_it_stopped(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A clean stop's log ended at ``shutting down (grace …)``: only the exit status said it finished. Its last
    line now says so (``stopped``, with how long the stop took)."""
    service = AtpService(make_config(), redis_url)
    await service.start()
    caplog.set_level(logging.INFO, logger="atp_service")
    assert await shut_down_here(service) == 0
    said = service_lines(caplog)
    assert getattr(said[0], "event", None) == "shutdown"
    last = said[-1]
    assert (last.levelname, getattr(last, "event", None)) == ("INFO", "stopped"), last.getMessage()
    assert 0 <= last.took_s <= STOP_LIMIT_S  # type: ignore[attr-defined]
    assert last.getMessage().startswith("stopped in ")
