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

from atp_service import free_port
from tests.atp_service.app.test_cli import stop_or_explain, wait_until_ready
from tests.conftest import spawned

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

sys.meta_path.insert(0, SignalWhileImporting())
sys.argv = ["atp_service", *sys.argv[1:]]
runpy.run_module("atp_service", run_name="__main__", alter_sys=True)
"""


def _gated_serve(redis_url: str, log: Path, signum: int) -> subprocess.Popen[bytes]:
    args = ["serve", "--redis-url", redis_url, "--port", str(free_port()), "--metrics-port", "-1", "--no-demo",
            "--auth", "off", "--log-level", "INFO", "--shards", "2"]
    return spawned(subprocess.Popen([sys.executable, "-c", GATED_START, *args], stdout=log.open("wb"),
                                    stderr=subprocess.STDOUT, env={**os.environ, "SIGNAL_AT_IMPORT": str(int(signum))}))


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
