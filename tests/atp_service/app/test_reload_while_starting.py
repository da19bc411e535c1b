"""A SIGHUP (``systemctl reload``, ``kill -HUP``) that reaches ``atp-service serve`` while it is still
starting (waiting for Redis, recovering its shards): the estate file is read again once it serves."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import pytest

from atp_service import AtpService
from tests.atp_service.app.test_health_truth import START_LIMIT_S, served, start_held
from tests.atp_service.channel_helpers import ESTATE, write_estate
from tests.conftest import test_config as config_for_tests
from tests.waiting import until

OUTLET = '\n[[channels]]\nname = "outlet"\nsells_from = ["dc-1"]\nthrottle_ms = 0\n'


async def test_a_sighup_while_starting_reloads_the_estate_once_serving(
        redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Defect: a SIGHUP while the start still recovered was refused (``RECOVERING``), logged at ERROR and
    forgotten: the service served the estate file as it was before the operator changed it, and the operator,
    who sent the signal and saw the service come up, took the new estate for loaded — until a restart or another
    SIGHUP. It is kept, and applied once the service serves (before its ready line), said to be late."""
    reached, go_on = start_held(monkeypatch)
    caplog.set_level(logging.INFO, logger="atp_service")
    path = write_estate(tmp_path)
    service = AtpService(config_for_tests(estate=path), redis_url)
    async with served(service, go_on) as (serving, stop):
        await asyncio.wait_for(reached.wait(), START_LIMIT_S)
        path.write_text(ESTATE + OUTLET)  # the operator adds a channel, and tells the service
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: any("SIGHUP" in r.getMessage() for r in caplog.records), "the SIGHUP taken",
                    START_LIMIT_S)
        go_on.set()
        await until(lambda: "ATP service ready" in capsys.readouterr().out, "the ready banner", START_LIMIT_S)
        assert service.channels is not None
        assert sorted(service.channels.feeds) == ["market", "outlet", "pickup", "web"], caplog.text  # was: no outlet
        assert "outlet" in service.estate.channels
        assert "SIGHUP (sent while starting, applied now it serves): estate reloaded" in caplog.text
        stop.set()
        assert await asyncio.wait_for(serving, START_LIMIT_S) == 0


async def test_a_stop_while_the_deferred_reload_runs_ends_it_never_ready(
        redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Defect: the reload of a SIGHUP sent while starting was awaited whole once the service served, a stop signal
    meanwhile unseen: the stop waited for it (its reads of Redis: a slow or absent Redis held the stop, a second signal
    too), and the service then printed its ready banner and logged ``ready`` though told to stop first. The stop ends
    the reload (its reads come before any change; the next start reads the estate file) and the service is never
    ready, as a stop while the demo estate loads."""
    reached, go_on = start_held(monkeypatch)
    reloading, never = asyncio.Event(), asyncio.Event()

    async def held_reload(self: AtpService) -> dict[str, int]:  # waiting on Redis, as long as the test likes
        reloading.set()
        await never.wait()
        return {}

    monkeypatch.setattr(AtpService, "reload_estate", held_reload)
    caplog.set_level(logging.INFO, logger="atp_service")
    service = AtpService(config_for_tests(estate=write_estate(tmp_path)), redis_url)
    async with served(service, never, go_on) as (serving, stop):
        await asyncio.wait_for(reached.wait(), START_LIMIT_S)
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: any("SIGHUP" in r.getMessage() for r in caplog.records), "the SIGHUP taken",
                    START_LIMIT_S)
        go_on.set()
        await asyncio.wait_for(reloading.wait(), START_LIMIT_S)
        stop.set()  # SIGTERM
        assert await asyncio.wait_for(serving, START_LIMIT_S) == 0  # was: TimeoutError, the stop waiting on the reload
        assert "ATP service ready" not in capsys.readouterr().out
        assert not any(getattr(r, "event", None) == "ready" for r in caplog.records)
