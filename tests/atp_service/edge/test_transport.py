"""gRPC's HTTP/2 server transport (http2_transport): what a call refused at the door is told, and what
a call in flight gets when the service stops."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, ServiceConfig
from atp_service.edge.transport import EXPERIMENT, active, experiments_for, refusal_status
from tests.atp_service.app.test_cli import serve, stop_or_explain
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.edge.test_overload import _Flood
from tests.ports import held_port
from tests.waiting import until


@pytest.mark.parametrize(("transport", "current", "expected"), [
    ("promise", None, "ph2_server"),
    ("promise", "event_engine_client", "event_engine_client,ph2_server"),
    ("promise", "ph2_server", "ph2_server"),
    ("promise", "-ph2_server,tcp_rcv_lowat", "tcp_rcv_lowat,ph2_server"),
    ("classic", "tcp_rcv_lowat, ph2_server", "tcp_rcv_lowat"),
    ("classic", None, ""),
])
def test_the_experiment_list_names_the_transport_and_keeps_the_operators_own(
        transport: str, current: str | None, expected: str) -> None:
    value = experiments_for(transport, current)
    assert value == expected
    assert active({"GRPC_EXPERIMENTS": value}) == transport  # so a re-executed process does not re-execute again


def test_each_transport_says_what_a_refusal_at_the_door_is_told() -> None:
    assert refusal_status("promise") == "RESOURCE_EXHAUSTED"
    assert refusal_status("classic") == "CANCELLED"
    assert active({}) == "classic" and EXPERIMENT == "ph2_server"


def test_an_unknown_transport_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"^http2_transport:"):
        ServiceConfig(http2_transport="quic")
    with pytest.raises(ValueError, match=r"^http2_transport:"):
        experiments_for("quic", None)


@pytest.fixture
def promise_service(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`atp-service serve --http2-transport promise` with a 4-call queue ahead of it."""
    log = tmp_path / "serve.log"
    proc, target, startup = serve(redis_url, log, "--http2-transport", "promise", "--max-pending-calls", "4")
    yield target, startup
    proc.terminate()
    assert stop_or_explain(proc, log) == 0


PAUSE_MS = 8000
"""The longest Redis writes are held (``CLIENT PAUSE``): shorter than the service's Redis timeout
(10 s here); a test lets them go once the stop has begun."""


async def _held_up_reservations(client: AtpClient, redis_url: str, n: int,
                                in_service: Callable[[], int]) -> list[asyncio.Future[Any]]:
    """``n`` reservations in flight, held up inside the service by a pause of Redis writes, once
    ``in_service()`` counts all of them taken: a fixed sleep would be a guess, and on a busy host a
    call the stop finds still outside is refused SHUTTING_DOWN. ``_let_writes_go`` ends the pause."""
    await client.record_events([receipt("seed", "A", "DC", 100)])
    with redis.Redis.from_url(redis_url) as r:
        r.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")  # the appends wait; reads go on
    calls = [asyncio.ensure_future(client.reserve(f"g{i}", [("A", "DC", 1)], ttl_seconds=600)) for i in range(n)]
    await until(lambda: in_service() >= n, f"{n} calls in the service", PAUSE_MS / 1000 / 2)
    assert not any(call.done() for call in calls)
    return calls


async def _let_writes_go(client: AtpClient, redis_url: str) -> None:
    """Once the service's stop has begun (health ``NOT_SERVING``), the held writes go on: the calls
    were in flight at the stop, and are answered within its grace (a fixed pause of the writes let a
    busy host begin the stop after they went on, or not get the calls in before it)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(client.channel)
    deadline = asyncio.get_running_loop().time() + PAUSE_MS / 1000 / 2
    try:
        while (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status == \
                health_pb2.HealthCheckResponse.SERVING:
            assert asyncio.get_running_loop().time() < deadline, "the stop never began"
            await asyncio.sleep(0.01)
    finally:
        with redis.Redis.from_url(redis_url) as r:
            r.execute_command("CLIENT", "UNPAUSE")


def calls_in_progress(metrics_port: int) -> int:
    """``atp_calls_in_progress`` as a service in another process exports it."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    (line,) = [line for line in body.splitlines() if line.startswith("atp_calls_in_progress ")]
    return int(float(line.split()[1]))


async def test_a_graceful_stop_answers_the_calls_in_flight(redis_url: str) -> None:
    """With the default (classic) transport, stop(grace) lets calls already taken finish: five
    reservations in flight when the stop begins all come back HELD."""
    from tests.conftest import test_config  # a module-level import would be collected as a test

    service = AtpService(test_config(redis_timeout_s=10.0), redis_url)  # longer than the pause
    await service.start()
    async with AtpClient(f"127.0.0.1:{service.port}") as client:
        calls = await _held_up_reservations(client, redis_url, 5, in_service=lambda: service._servicer.drain.active)
        stopping = asyncio.ensure_future(service.stop(grace_s=10))
        await _let_writes_go(client, redis_url)
        await stopping
        answers = await asyncio.gather(*calls)
    assert [a.state for a in answers] == [pb.RESERVATION_STATE_HELD] * 5


@pytest.mark.slow
def test_with_the_promise_transport_too_a_graceful_stop_answers_calls_in_flight_and_retries_replay_them(
        redis_url: str, tmp_path: Path) -> None:
    """Left to gRPC, the promise transport fails calls in flight at once with INTERNAL on SIGTERM
    (it did before the service drained itself first, atp_service/edge/drain.py): now they are answered
    before gRPC stops. Retrying the same ids against the restarted service replays each: once."""
    log, metrics_port = tmp_path / "serve.log", held_port()
    proc, target, _ = serve(redis_url, log, "--http2-transport", "promise", "--metrics-port", str(metrics_port),
                            env={"ATP_REDIS_TIMEOUT_S": "10"})  # longer than the pause

    async def stopped_mid_call() -> list[BaseException | Any]:
        async with AtpClient(target) as client:
            calls = await _held_up_reservations(client, redis_url, 5,
                                                in_service=lambda: calls_in_progress(metrics_port))
            proc.terminate()
            await _let_writes_go(client, redis_url)
            return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(stopped_mid_call())
    assert stop_or_explain(proc, log) == 0
    assert [o.state if isinstance(o, pb.ReserveResponse) else o for o in outcomes] == [pb.RESERVATION_STATE_HELD] * 5

    log = tmp_path / "restarted.log"
    proc, target, _ = serve(redis_url, log)  # restarted, classic transport

    async def retried() -> tuple[list[Any], int]:
        async with AtpClient(target) as client:
            again = [await client.reserve(f"g{i}", [("A", "DC", 1)], ttl_seconds=600) for i in range(5)]
            (a,) = await client.availability([("A", "DC")])
            return again, a.reserved

    try:
        again, reserved = asyncio.run(retried())
    finally:
        proc.terminate()
        assert stop_or_explain(proc, log) == 0
    # Each landed before the stop: the retry replays it, nothing is counted twice.
    assert [a.state for a in again] == [pb.RESERVATION_STATE_HELD] * 5 and reserved == 5, (again, reserved)


@pytest.mark.slow
def test_with_the_promise_transport_a_flood_past_the_queue_is_refused_resource_exhausted(
        promise_service: tuple[str, str]) -> None:
    """The issue's overload status: calls past max_pending_calls are answered RESOURCE_EXHAUSTED by
    gRPC core at once, and none of them was applied."""
    target, startup = promise_service
    assert "re-executing with GRPC_EXPERIMENTS=ph2_server" in startup
    assert "calls past max_pending_calls (4) are answered RESOURCE_EXHAUSTED" in startup

    async def flood() -> None:
        async with AtpClient(target, timeout_s=30) as client:
            await client.record_events([receipt("seed", "A", "DC", 1_000_000)])
            calls = _Flood(client)
            await asyncio.gather(*(calls.reserve(f"p{n}") for n in range(400)))
            assert calls.outcomes.get("RESOURCE_EXHAUSTED", 0) > 0 and calls.outcomes.get("OK", 0) > 0, calls.outcomes
            assert set(calls.outcomes) <= {"OK", "RESOURCE_EXHAUSTED"}, calls.outcomes
            assert "Too many pending requests" in (calls.refused[0][1].details() or "")
            await calls.check_refused_were_never_applied()

    asyncio.run(flood())


def test_with_the_promise_transport_the_start_says_the_stream_window_is_not_enforced(
        redis_url: str, tmp_path: Path) -> None:
    """grpcio 1.85's promise transport takes a call's request whatever the service has read: a ReserveStream written
    ahead of a service deciding nothing had 100 MB taken on one stream, unread (the classic transport: 64 KiB,
    ``stream_window_bytes``). The start said nothing of it, the settings and OPERATIONS.md a bound for every call."""
    log = tmp_path / "serve.log"
    proc, _, startup = serve(redis_url, log, "--http2-transport", "promise", "--stream-window-bytes", "32768")
    proc.terminate()
    assert stop_or_explain(proc, log) == 0
    assert "re-executing with GRPC_EXPERIMENTS=ph2_server" in startup
    assert "stream_window_bytes (32768) is not enforced" in startup, startup
