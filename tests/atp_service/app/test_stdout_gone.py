"""`atp-service serve` whose standard output's reader went away while it started (`atp-service serve | head -3`,
`make run | tee run.log` with tee gone, a log collector restarted): its ready banner cannot be written. The
BrokenPipeError of that print left serving mid-way — never said ready, its tasks never stopped, so the
process hung for good at its exit, the port held, deaf to SIGINT and SIGTERM (a supervisor's stop ran to
SIGKILL). The banner is lost; the service serves, says ready in its log, and stops as it should."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.atp_service.app.test_cli import stop_or_explain, wait_for_line
from tests.conftest import spawned
from tests.ports import held_port

pytestmark = pytest.mark.slow


def test_a_service_whose_stdout_reader_is_gone_serves_and_stops_on_a_signal(redis_url: str, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    port = held_port()
    proc = spawned(subprocess.Popen(
        [sys.executable, "-m", "atp_service", "serve", "--redis-url", redis_url, "--port", str(port),
         "--metrics-port", "-1", "--no-demo", "--auth", "off", "--log-level", "INFO"],
        stdout=subprocess.PIPE, stderr=log.open("ab")))
    assert proc.stdout is not None
    proc.stdout.close()  # gone before the banner: nothing goes to stdout before it (logs go to stderr)
    wait_for_line(proc, log, "event=ready", limit_s=30)  # before: the banner's print raised, never ready
    proc.send_signal(signal.SIGINT)
    assert stop_or_explain(proc, log) == 0, log.read_text()[-3000:]
