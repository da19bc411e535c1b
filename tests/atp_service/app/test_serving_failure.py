"""`atp-service serve` when an exception escapes serving after the start (a bug of its own: here injected where
the ready line is written). Raised as it was, the service's tasks were never stopped: asyncio.run's one cancel at
the loop's end was lost by the input stream's reader and backlog gauge (redis-py on 3.11, ``tasks.cancel_and_wait``),
and the process hung for good, every SIGINT and SIGTERM taken by a stop nobody waited on. Now it is said, the
bounded stop runs, and the process exits 1 (restart it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.atp_service.app.test_cli import stop_or_explain
from tests.conftest import spawned
from tests.ports import held_port

pytestmark = pytest.mark.slow

FAILING_AT_READY = """
import sys
import atp_service.app.serving as serving
from atp_service.app.cli import main
ready = serving._print_ready
def ready_then_failing(config, service):
    ready(config, service)
    raise RuntimeError("injected: a failure while serving")
serving._print_ready = ready_then_failing
sys.exit(main(sys.argv[1:]))
"""


def test_an_exception_escaping_serving_after_the_start_stops_the_process_non_zero(
        redis_url: str, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    proc = spawned(subprocess.Popen(
        [sys.executable, "-c", FAILING_AT_READY, "serve", "--redis-url", redis_url, "--port", str(held_port()),
         "--metrics-port", "-1", "--no-demo", "--auth", "off", "--log-level", "INFO"],
        stdout=subprocess.DEVNULL, stderr=log.open("ab")))
    assert stop_or_explain(proc, log) == 1, log.read_text()[-3000:]  # before: never exited (tasks still running)
    said = log.read_text()
    assert "event=stopping" in said and "why=start_failed" in said and "injected: a failure while serving" in said
