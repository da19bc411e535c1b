"""A run whose test left a gRPC server running still exits (the test harness's own guard)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

LEFT_RUNNING = """
import asyncio, gc, sys
import grpc
import tests.conftest  # what every test run imports first

async def main() -> None:
    server = grpc.aio.server()
    server.add_insecure_port("127.0.0.1:0")
    await server.start()
    sys.modules["__main__"].left = server  # never stopped: its test failed first, say

asyncio.run(main())
del sys.modules["__main__"].left
gc.collect()  # as pytest collects after its last test
print("exited", flush=True)
"""


def test_a_grpc_server_left_running_by_a_test_does_not_hang_the_run_at_exit(project_root: Path) -> None:
    """A grpc.aio server collected after its event loop closed, never stopped, hung the process
    for ever: gRPC shut its global completion queue down and joined the poller thread, which waited
    for the server's pending calls (grpc/grpc#22365) — a pytest-xdist worker, and CI with it, hung
    until its own timeout. The conftest keeps that queue up until the process exits."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project_root), str(project_root / "client")])}
    done = subprocess.run([sys.executable, "-c", LEFT_RUNNING], cwd=project_root, env=env, capture_output=True,
                          text=True, timeout=90)  # a bound for a process that never exits, not a timing
    assert done.returncode == 0 and "exited" in done.stdout, done.stderr
