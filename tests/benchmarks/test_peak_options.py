"""The peak simulation's options: against a secured service (mutual TLS, bearer tokens) with every
setting a command-line option (no ``ATP_*`` variable), the ReserveStream user among the unary ones;
a worker gets them from its master; the web UI chooses the scenario.

No timing assertions: a run passes when nothing failed and the invariants hold.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import sys
import urllib.parse
import urllib.request
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from atp_client import new_token, token_hash
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_client.pb.atp.v1 import atp_pb2_grpc as pb_grpc
from atp_service.app.certs import make_certs
from atp_service.app.service import DEMO_ESTATE
from benchmarks.peak.connection import connection_of
from tests.conftest import ServiceFactory
from tests.ports import held_port

ROOT = Path(__file__).resolve().parent.parent.parent
ROLES = '["oms", "ingest", "channel"]'  # what the simulation calls: orders and streams, facts, watches
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def token(tmp_path: Path) -> tuple[Path, str]:
    """A callers file with the load generator's token; returns it and the token."""
    token = new_token()
    callers = tmp_path / "callers.toml"
    callers.write_text(f'[[callers]]\nname = "locust"\nroles = {ROLES}\ntoken_sha256 = "{token_hash(token)}"\n')
    return callers, token


async def secured(start_service: ServiceFactory, certs: Path, callers: Path) -> str:
    """A service that takes only mutual TLS (a client certificate of our CA) and known tokens."""
    service, _ = await start_service(estate=DEMO_ESTATE, auth="on", callers_file=callers,
                                     tls_cert=certs / "server.pem", tls_key=certs / "server.key",
                                     tls_client_ca=certs / "ca.pem")
    return f"127.0.0.1:{service.port}"


Rows = dict[tuple[str, str], dict[str, str]]


async def start_locust(*args: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATP_")}  # options only
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "locust", "-f", "benchmarks/locustfile.py", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)


async def _output_until(proc: asyncio.subprocess.Process, mark: bytes, limit_s: float) -> bytes:
    """What ``proc`` wrote up to and with the line holding ``mark`` (all of it, if it ended first)."""
    assert proc.stdout is not None
    out = b""
    async with asyncio.timeout(limit_s):
        while mark not in out:
            line = await proc.stdout.readline()
            if not line:
                break
            out += line
    return out


async def locust(target: str, certs: Path, out: Path, *options: str) -> tuple[int, str, Rows]:
    """A short headless run with mutual TLS; (exit code, output, stats rows by (type, name))."""
    proc = await start_locust("--headless", "--only-summary", "--host", target, "--csv", str(out),
                              "--tls-ca", str(certs / "ca.pem"), "--client-cert", str(certs / "client.pem"),
                              "--client-key", str(certs / "client.key"), *options)
    output, _ = await asyncio.wait_for(proc.communicate(), 90)
    written = Path(f"{out}_stats.csv")
    said = output.decode()[-3000:]
    assert await asyncio.to_thread(written.exists), f"locust exited {proc.returncode} without its stats:\n{said}"
    stats = await asyncio.to_thread(written.read_text)
    rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(stats.splitlines())}
    return proc.returncode or 0, output.decode(), rows


async def test_a_run_over_mutual_tls_with_a_token_fails_nothing_and_checks_the_stream_too(
        start_service: ServiceFactory, certs: Path, token: tuple[Path, str], tmp_path: Path) -> None:
    callers, secret = token
    target = await secured(start_service, certs, callers)
    (tmp_path / "token").write_text(secret + "\n")
    code, out, rows = await locust(target, certs, tmp_path / "run", "--scenario", "holiday_peak", "--duration", "4",
                                   "--peak-users", "6", "--run-id", "sec", "--stream-users", "1",
                                   "--stream-batch", "5", "--store-skus", "10",
                                   "--token-file", str(tmp_path / "token"))
    assert code == 0, out[-3000:]
    assert int(rows[("", "Aggregated")]["Failure Count"]) == 0, out[-3000:]
    batches = int(rows[("grpc", "ReserveStream[batch]")]["Request Count"])
    items = {name: int(rows.get(("grpc-item", f"ReserveStream[{name}]"), {}).get("Request Count", 0))
             for name in ("held", "rejected")}
    assert batches > 0 and items["held"] > 0 and sum(items.values()) == 5 * batches, rows.keys()
    assert any(kind == "grpc" and not name.startswith("ReserveStream") for kind, name in rows), rows.keys()
    assert "invariants (holiday_peak, run sec):" in out and "checked: OK" in out, out[-3000:]


async def test_a_worker_started_without_options_gets_them_all_from_the_master(
        start_service: ServiceFactory, certs: Path, token: tuple[Path, str], tmp_path: Path) -> None:
    callers, secret = token
    target = await secured(start_service, certs, callers)
    port = held_port()
    worker = await start_locust("--worker", "--master-host", "127.0.0.1", "--master-port", str(port))
    try:
        code, out, rows = await locust(target, certs, tmp_path / "run", "--master", "--master-bind-port", str(port),
                                       "--expect-workers", "1", "--scenario", "steady", "--duration", "3",
                                       "--peak-users", "3", "--run-id", "dist", "--stream-batch", "3",
                                       "--store-skus", "10",
                                       "--token", secret)
        worker_out, _ = await asyncio.wait_for(worker.communicate(), 60)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    assert code == 0 and int(rows[("", "Aggregated")]["Failure Count"]) == 0, out[-3000:]
    assert int(rows[("grpc", "ReserveStream[batch]")]["Request Count"]) > 0, rows.keys()
    assert int(rows[("grpc", "GetAvailability")]["Request Count"]) > 0, rows.keys()
    assert "invariants (steady, run dist):" in worker_out.decode() and "checked: OK" in worker_out.decode()


async def test_a_run_without_the_token_is_refused(start_service: ServiceFactory, certs: Path,
                                                  token: tuple[Path, str], tmp_path: Path) -> None:
    callers, _ = token
    target = await secured(start_service, certs, callers)
    code, out, rows = await locust(target, certs, tmp_path / "run", "--scenario", "flash_sale", "--duration", "3",
                                   "--peak-users", "3", "--stream-batch", "2")
    assert code != 0, out[-3000:]
    assert int(rows[("grpc", "ReserveStream[batch]")]["Failure Count"]) > 0, rows.keys()
    failures = await asyncio.to_thread(Path(f"{tmp_path / 'run'}_failures.csv").read_text)
    errors = [r["Error"] for r in csv.DictReader(failures.splitlines())]
    assert errors and all("UNAUTHENTICATED" in e for e in errors if "invariant" not in e), errors


async def test_the_connection_sends_the_token_on_unary_and_stream_calls(
        start_service: ServiceFactory, certs: Path, token: tuple[Path, str]) -> None:
    callers, secret = token
    target = await secured(start_service, certs, callers)
    options = Namespace(tls_ca=str(certs / "ca.pem"), client_cert=str(certs / "client.pem"),
                        client_key=str(certs / "client.key"), tls_server_name="", token=secret, token_file=None)

    def calls() -> tuple[int, int]:
        with connection_of(options, target).open() as channel:
            stub = pb_grpc.AvailabilityServiceStub(channel)  # type: ignore[no-untyped-call]
            read = stub.GetAvailability(pb.GetAvailabilityRequest(keys=[pb.PositionKey(sku="A", location="L")]),
                                        timeout=30)
            batch = pb.ReserveStreamRequest(reservations=[pb.ReserveRequest(
                reservation_id="c1", lines=[pb.Line(sku="A", location="L", quantity=1)])])
            (answer,) = stub.ReserveStream(iter([batch]), timeout=30)
            return len(read.positions), len(answer.outcomes)

    assert await asyncio.to_thread(calls) == (1, 1)


def _http(url: str, form: dict[str, str] | None = None) -> dict[str, Any]:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    with urllib.request.urlopen(url, data=data, timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


async def _until(url: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll ``url`` (JSON) until ``done(answer)``; errors while locust starts count as not yet."""
    for _ in range(600):  # a guard against a hang, far beyond a run's few seconds
        try:
            answer = await asyncio.to_thread(_http, url)
            if done(answer):
                return answer
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"{url}: never done")


async def test_the_web_ui_chooses_the_scenario_and_its_options(start_service: ServiceFactory) -> None:
    service, _ = await start_service(estate=DEMO_ESTATE)
    port = held_port()
    web = f"http://127.0.0.1:{port}"
    proc = await start_locust("--web-host", "127.0.0.1", "--web-port", str(port), "--host",
                              f"127.0.0.1:{service.port}")
    try:
        await _until(f"{web}/stats/requests", lambda a: a["state"] == "ready")
        form = {"scenario": "flash_sale", "duration": "3", "peak_users": "3", "run_id": "web", "flash_stock": "5",
                "stream_users": "1", "stream_batch": "2", "host": f"127.0.0.1:{service.port}"}
        started = await asyncio.to_thread(_http, f"{web}/swarm", form)
        assert started["success"], started
        report = await _until(f"{web}/stats/requests", lambda a: a["state"] == "stopped")
        # locust reports the run stopped before its test_stop listeners (the invariant check) ran
        output = await _output_until(proc, b"acknowledged reservations checked:", 60)
    finally:
        proc.terminate()
        rest, _ = await asyncio.wait_for(proc.communicate(), 60)
    output += rest
    stats = {s["name"]: s for s in report["stats"]}
    assert stats["Aggregated"]["num_failures"] == 0 and stats["ReserveStream[batch]"]["num_requests"] > 0, stats
    assert any(name.startswith("Reserve[") for name in stats) and "GetAvailability" not in stats, stats.keys()
    text = output.decode()
    assert "invariants (flash_sale, run web): 20 positions" in text and "checked: OK" in text, text[-3000:]
