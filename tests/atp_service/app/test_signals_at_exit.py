"""A signal that reaches ``atp-service serve`` after its event loop closed, while it stops its embedded
redis-server (that Redis flushes its append-only file first: up to 10 s) and exits: a ``SIGHUP`` (an estate
reload, ``systemctl reload``) or a ``SIGUSR1`` (a dump of the tasks) is ignored, as at any other moment,
instead of killing the process and its exit status with it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.atp_service.app.test_cli import stop_or_explain, wait_for_line, wait_until_ready
from tests.atp_service.app.test_service_lifecycle import ignored_signals
from tests.conftest import spawned

pytestmark = pytest.mark.slow

# The child runs `python -m atp_service serve` with one addition: its stop of the embedded redis-server (once its
# event loop has closed) says so, then waits for the test's word (the file ``release``). Deterministic: no timing
# decides the moment the signals are sent.
HELD_REDIS_STOP = """
import os, runpy, sys, time
from pathlib import Path

from atp_service.storage.embedded_redis import EmbeddedRedis

stop = EmbeddedRedis.stop

def held_stop(self, *args, **kwargs):
    print("stopping the embedded redis-server (held)", flush=True)
    while not Path(os.environ["RELEASE_FILE"]).exists():
        time.sleep(0.02)
    stop(self, *args, **kwargs)

EmbeddedRedis.stop = held_stop
sys.argv = ["atp_service", *sys.argv[1:]]
runpy.run_module("atp_service", run_name="__main__", alter_sys=True)
"""


def test_a_sighup_while_serve_stops_its_embedded_redis_is_ignored(tmp_path: Path) -> None:
    """Defect: the event loop's close gave back the signals it had taken over, SIGHUP and SIGUSR1 their
    default action, terminate (with ``event_loop = asyncio``; uvloop leaves its own, which drops them): one
    sent while ``serve`` stopped its embedded Redis or exited killed it (status -1), its exit status lost —
    a 4 (a shard stopped working) that systemd restarts read as a clean stop by signal, not restarted."""
    log, release = tmp_path / "serve.log", tmp_path / "release"
    proc = spawned(subprocess.Popen(
        [sys.executable, "-c", HELD_REDIS_STOP, "serve", "--data-dir", str(tmp_path / "data"), "--port", "0",
         "--metrics-port", "-1", "--no-demo", "--auth", "off", "--shards", "2", "--event-loop", "asyncio"],
        env={**os.environ, "RELEASE_FILE": str(release)}, stdout=log.open("wb"), stderr=subprocess.STDOUT))
    try:
        wait_until_ready(proc, log)
        proc.send_signal(signal.SIGTERM)
        wait_for_line(proc, log, "stopping the embedded redis-server (held)")  # its event loop has closed
        # Read where the kernel keeps it, not slept on: a SIGHUP sent now is dropped at once, or kills it.
        assert ignored_signals(proc.pid) >= {signal.SIGHUP, signal.SIGUSR1}, log.read_text()
        for ignored in (signal.SIGHUP, signal.SIGUSR1):
            proc.send_signal(ignored)
        release.touch()
        assert stop_or_explain(proc, log) == 0, log.read_text()
    finally:  # released whatever failed: it stops its Redis (else left running) before the process is killed
        release.touch()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
