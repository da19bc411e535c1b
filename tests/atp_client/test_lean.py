"""The client installs and runs without the server: its declared dependencies are gRPC, protobuf
and the google.rpc details, and running atpctl loads nothing of the server's stack."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import ServiceFactory

SERVER_STACK = ("numpy", "uvloop", "redis", "httpx", "msgspec", "prometheus_client", "atp_service", "reservation",
                "publishers")
GUARD = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {forbidden!r}:
            raise ImportError(f"the client imported {{name}}")
sys.meta_path.insert(0, Refuse())
from atp_client.ctl import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_client_distribution_declares_no_server_dependency(project_root: Path) -> None:
    project = tomllib.loads((project_root / "client" / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("=")[0].split("[")[0].strip() for dep in project["dependencies"]}
    assert names == {"grpcio", "grpcio-health-checking", "grpcio-status", "googleapis-common-protos", "protobuf"}
    assert project["scripts"] == {"atpctl": "atp_client.ctl:main"}
    assert (project_root / "client" / "atp_client" / "py.typed").exists()


def _atpctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", GUARD.format(forbidden=set(SERVER_STACK)), *args],
                          capture_output=True, text=True, timeout=60)


def test_atpctl_runs_without_loading_the_server_stack() -> None:
    """Run in a process where importing any of the server's packages fails."""
    done = _atpctl("--target", "127.0.0.1:1", "--retries", "0", "--timeout", "2", "availability", "A@L")
    assert done.returncode == 6 and "UNAVAILABLE" in done.stderr, done.stderr  # not an ImportError
    done = _atpctl("token", "new", "oms-eu", "--roles", "oms")
    assert done.returncode == 0 and "token_sha256" in done.stdout, done.stderr


async def test_atpctl_answers_from_a_real_service_without_the_server_stack(start_service: ServiceFactory) -> None:
    service, _ = await start_service()
    args = ("--target", f"127.0.0.1:{service.port}", "reserve", "r1", "A@L:1", "--json")
    done = await asyncio.to_thread(_atpctl, *args)
    assert done.returncode == 0 and '"state": "RESERVATION_STATE_REJECTED"' in done.stdout, done.stderr
