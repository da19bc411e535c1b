"""A signal that reaches `atp-service serve` while it still imports its modules (a second or more
on a busy machine): a stop ends the start with exit status 0, as a stop during the start does, and
a SIGHUP is ignored (the estate is read at the start anyway) instead of killing the process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.atp_service.app.test_cli import stop_or_explain, wait_until_ready
from tests.conftest import spawned
from tests.ports import held_port

pytestmark = pytest.mark.slow

# The child runs `python -m atp_service serve` with one addition: the moment the service's command
# line module is first looked for (the import every start goes through before `cli` can take the
# signals over), the process sends itself the signal. Deterministic: no timing decides the moment.
GATED_START = """
import os, runpy, signal, sys

class SignalWhileImporting:
    def find_spec(self, name, path=None, target=None):
        if name == "atp_service.app.cli":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), int(os.environ["SIGNAL_AT_IMPORT"]))
        return None

class SignalWhileReexecuting:
    def find_spec(self, name, path=None, target=None):
        # Only in the process `serve` re-executed for the promise transport (its GRPC_EXPERIMENTS names
        # it), at its first import of the service: before that process can catch anything.
        if name == "atp_service" and "ph2_server" in os.environ.get("GRPC_EXPERIMENTS", ""):
            sys.meta_path.remove(self)
            os.kill(os.getpid(), int(os.environ["SIGNAL_AT_REEXEC"]))
        return None

sys.meta_path.insert(0, SignalWhileReexecuting() if "SIGNAL_AT_REEXEC" in os.environ else SignalWhileImporting())
sys.argv = ["atp_service", *sys.argv[1:]]
runpy.run_module("atp_service", run_name="__main__", alter_sys=True)
"""


def _gated_serve(redis_url: str, log: Path, signum: int, *flags: str, gate: str = "SIGNAL_AT_IMPORT",
                 ) -> subprocess.Popen[bytes]:
    args = ["serve", "--redis-url", redis_url, "--port", str(held_port()), "--metrics-port", "-1", "--no-demo",
            "--auth", "off", "--log-level", "INFO", "--shards", "2", *flags]
    env = {**os.environ, gate: str(int(signum))}
    env.pop("GRPC_EXPERIMENTS", None)  # the classic transport in effect: ``--http2-transport promise`` re-executes
    return spawned(subprocess.Popen([sys.executable, "-c", GATED_START, *args], stdout=log.open("wb"),
                                    stderr=subprocess.STDOUT, env=env))


def test_a_stop_while_importing_ends_the_start_with_status_0(redis_url: str, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    proc = _gated_serve(redis_url, log, signal.SIGTERM)
    assert stop_or_explain(proc, log) == 0, log.read_text()  # was -15: killed the default way
    text = log.read_text()
    assert "stop signal before the start: not started" in text and "ready" not in text


def test_a_sighup_while_importing_is_ignored(redis_url: str, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    proc = _gated_serve(redis_url, log, signal.SIGHUP)
    wait_until_ready(proc, log)  # was: killed by the SIGHUP before it served
    proc.terminate()
    assert stop_or_explain(proc, log) == 0, log.read_text()


def test_a_stop_as_serve_re_executes_for_the_promise_transport_ends_the_start_with_status_0(
        redis_url: str, tmp_path: Path) -> None:
    """The process ``serve`` re-executes (same pid) runs its interpreter's start and its first import
    before it can catch a signal; a stop there, or one just before the ``execve``, was lost or killed it."""
    log = tmp_path / "serve.log"
    proc = _gated_serve(redis_url, log, signal.SIGTERM, "--http2-transport", "promise", gate="SIGNAL_AT_REEXEC")
    assert stop_or_explain(proc, log) == 0, log.read_text()  # was -15: killed the default way
    text = log.read_text()
    assert "re-executing with GRPC_EXPERIMENTS" in text, text
    assert "stop signal before the start: not started" in text and "ready" not in text
