"""Health never says SERVING while the service has been told to stop to be restarted (exit status 4):
a probe, a load balancer or a library caller asking ``grpc.health.v1`` must not be told a service
whose shard stopped working is fit to serve."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from atp_service import AtpService
from atp_service.app import cli
from atp_service.app import serving as serving_module
from atp_service.intake.ingest import StreamIngestor
from tests.conftest import test_config as config_for_tests
from tests.waiting import until

START_LIMIT_S = 30.0
"""A bound on how long the start may take to reach the step the test holds (not a timing)."""


async def health(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        return await status(channel)


async def status(channel: grpc.aio.Channel) -> int:
    """What the service behind ``channel`` says of itself as a whole (``grpc.health.v1``, service "")."""
    answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return int(answer.status)


async def not_serving(asked: Awaitable[int]) -> bool:
    """Whether the health status ``asked`` (``health`` or ``status``) is NOT_SERVING: for ``until``."""
    return await asked == health_pb2.HealthCheckResponse.NOT_SERVING


def start_held(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """The start held at a later step (the input streams' groups: waiting on Redis, say): the event set once it
    is reached, and the one that releases it."""
    reached, go_on = asyncio.Event(), asyncio.Event()
    original = StreamIngestor.start

    async def held_start(self: StreamIngestor) -> None:
        reached.set()
        await go_on.wait()
        await original(self)

    monkeypatch.setattr(StreamIngestor, "start", held_start)
    return reached, go_on


@asynccontextmanager
async def served(service: AtpService, *holds: asyncio.Event) -> AsyncIterator[tuple[asyncio.Future[int],
                                                                                    asyncio.Event]]:
    """``atp-service serve``'s loop over ``service``: its exit status to come, and the event that asks it to stop
    (a SIGTERM's); however the block ends, every hold is released, the stop asked, the signals the loop took given
    back to the test process, and the service stopped."""
    request = cli._StopRequest(None)
    serving = asyncio.ensure_future(cli._serve_until_stopped(service.config, service, request, lambda: False))
    loop = asyncio.get_running_loop()
    try:
        yield serving, request.event
    finally:
        for hold in holds:
            hold.set()
        request.event.set()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
            loop.remove_signal_handler(sig)  # the test process's own again
        await asyncio.wait_for(service.stop(grace_s=0.1), START_LIMIT_S)


async def test_a_shard_that_fails_while_the_start_waits_leaves_health_not_serving(
        redis_url: str, monkeypatch: object) -> None:
    """Defect: a shard that stopped working while the start still waited on a later step (the input
    streams' groups, the channel feeds: each waits for Redis as long as it takes) set health
    NOT_SERVING, and the start then set it SERVING at its end: a service told to stop to be
    restarted (``failed``) said SERVING, the shard answering every call UNAVAILABLE."""
    reached, go_on = start_held(monkeypatch)  # type: ignore[arg-type]
    service = AtpService(config_for_tests(), redis_url)
    starting = asyncio.ensure_future(service.start())
    try:
        await asyncio.wait_for(reached.wait(), START_LIMIT_S)
        assert service.engine is not None
        service.engine.actors[0].break_down(RuntimeError("a bug in shard 0's turn"))
        assert service.failed.is_set()
        go_on.set()
        await asyncio.wait_for(starting, START_LIMIT_S)
        for _ in range(10):  # whatever the start or the failure left queued has run
            await asyncio.sleep(0)
        assert await health(service.port) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        go_on.set()
        await asyncio.wait_for(service.stop(grace_s=0.1), START_LIMIT_S)


async def test_a_service_told_to_stop_during_its_start_is_never_announced_ready(
        redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Defect: a shard that stopped working while the start waited on a later step (or a newer instance's claim
    found then: a rolling deploy's two starts) left health NOT_SERVING, and ``atp-service serve`` then printed the
    ready banner and logged ``ready`` all the same — what a deploy waits for — before it stopped (exit status 4, or
    3). It stops without announcing anything."""
    reached, go_on = start_held(monkeypatch)
    service = AtpService(config_for_tests(), redis_url)
    async with served(service, go_on) as (serving, _):
        await asyncio.wait_for(reached.wait(), START_LIMIT_S)
        assert service.engine is not None
        service.engine.actors[0].break_down(RuntimeError("a bug in shard 0's turn"))
        go_on.set()
        assert await asyncio.wait_for(serving, START_LIMIT_S) == cli.EXIT_SHARD_FAILED
    assert "ready" not in capsys.readouterr().out


async def test_health_says_serving_only_once_the_demo_estate_is_loaded(
        redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Defect: ``make run``'s first start said SERVING once the shards were recovered, before the demo estate was
    loaded (a few seconds): a probe, a script or a newcomer trusting it was answered from an empty estate (no stock
    anywhere, every Reserve refused), while the ready banner still waited for the load."""
    reached, go_on = asyncio.Event(), asyncio.Event()

    async def held_load(_service: AtpService) -> None:  # the demo estate's load, held until released
        reached.set()
        await go_on.wait()

    monkeypatch.setattr(serving_module, "load_demo", held_load)
    service = AtpService(config_for_tests(demo=True), redis_url)
    async with served(service, go_on) as (serving, stop):
        await asyncio.wait_for(reached.wait(), START_LIMIT_S)
        assert await health(service.port) == health_pb2.HealthCheckResponse.NOT_SERVING
        go_on.set()
        await until(lambda: "ATP service ready" in capsys.readouterr().out, "the ready banner", START_LIMIT_S)
        assert await health(service.port) == health_pb2.HealthCheckResponse.SERVING
        stop.set()
        assert await asyncio.wait_for(serving, START_LIMIT_S) == 0


async def test_a_service_told_to_stop_while_the_demo_estate_loads_is_never_announced_ready(
        redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Defect: a shard that stopped working while the demo estate loaded, past its last write of the load (or a newer
    instance's claim found then), left health NOT_SERVING (``serve`` says nothing over it), and ``atp-service serve``
    then printed the ready banner and its suggestions all the same — what a person or a script waits for — before it
    stopped (exit status 4, or 3). The check that a start told to stop is never announced ready was made before the
    load only. It stops without announcing anything."""

    async def load_then_a_shard_fails(service: AtpService) -> None:  # the last write of the load made, then a bug
        assert service.engine is not None
        service.engine.actors[0].break_down(RuntimeError("a bug in shard 0's turn"))

    monkeypatch.setattr(serving_module, "load_demo", load_then_a_shard_fails)
    service = AtpService(config_for_tests(demo=True), redis_url)
    async with served(service) as (serving, _):
        assert await asyncio.wait_for(serving, START_LIMIT_S) == cli.EXIT_SHARD_FAILED
    assert "ready" not in capsys.readouterr().out
