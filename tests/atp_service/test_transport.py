"""gRPC's HTTP/2 server transport: which status a call refused at the door gets (http2_transport)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from atp_service import AtpClient, ServiceConfig, free_port
from atp_service.transport import EXPERIMENT, active, experiments_for, refusal_status

from .test_api import receipt
from .test_cli import stop_or_explain
from .test_overload import _Flood


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
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "atp_service", "serve", "--redis-url", redis_url, "--port", str(port),
         "--metrics-port", "-1", "--no-demo", "--auth", "off", "--http2-transport", "promise",
         "--max-pending-calls", "4", "--log-level", "INFO"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while "ATP service ready" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    yield f"127.0.0.1:{port}", log.read_text()
    proc.terminate()
    assert stop_or_explain(proc, log) == 0


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
