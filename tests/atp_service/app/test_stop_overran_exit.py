"""A stop cut off at its bound exits with its own status (6), so that a supervisor tells it from a
clean stop (0): the real ``atp-service serve`` process, stopped by SIGTERM while its Redis answers
nothing, so that its final snapshot cannot finish."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from atp_client import AtpClient
from atp_service.app.cli import EXIT_STOP_OVERRAN
from atp_service.config import ServiceConfig
from atp_service.edge import transport
from atp_service.storage.embedded_redis import EmbeddedRedis
from tests.atp_service.app.test_cli import stop_or_explain, wait_for_line, wait_until_ready
from tests.atp_service.edge.test_api import receipt
from tests.conftest import spawned
from tests.ports import held_port

# ``serve`` as ``python -m atp_service serve`` runs it, the final snapshots' bound (60 s) taken to 0
# so the test need not wait a minute: the stop's bound is then its 1 s least. The gRPC transport's
# variable set as ``serve`` would set it, so it does not re-execute itself (losing the bound).
SERVE = ("import sys; import atp_service.app.cli as cli; import atp_service.app.shutdown as shutdown; "
         "shutdown.SHUTDOWN_SNAPSHOT_S = 0.0; sys.exit(cli.main(sys.argv[1:]))")


def test_a_stop_that_overran_its_bound_exits_6(tmp_path: Path) -> None:
    """``shutdown_overran`` was logged and the process exited 0, as after a clean stop: systemd and
    Kubernetes could not tell a stop that abandoned its final snapshots (and cancelled calls) from
    one that finished them."""
    port, log = held_port(), tmp_path / "serve.log"
    env = {**os.environ, transport.ENV: transport.experiments_for(ServiceConfig().http2_transport,
                                                                  os.environ.get(transport.ENV))}
    with EmbeddedRedis(tmp_path / "redis") as server:
        proc = spawned(subprocess.Popen(
            [sys.executable, "-c", SERVE, "serve", "--redis-url", server.url, "--port", str(port), "--no-demo",
             "--auth", "off", "--metrics-port", "-1", "--shards", "2", "--shutdown-grace-s", "0.5",
             "--redis-timeout-s", "30", "--input-streams", ""],
            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env))
        wait_until_ready(proc, log)
        asyncio.run(_record(port))  # a shard with a snapshot to write
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)  # Redis answers nothing: the final snapshot waits 30 s
        try:
            proc.terminate()
            status = stop_or_explain(proc, log)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
    said = wait_for_line(proc, log, "shutdown did not finish")
    assert status == EXIT_STOP_OVERRAN == 6, said[-3000:]
    assert "exit status 6" in said
    assert "stopped in" not in said  # neither ``stopped`` (a clean stop) nor ``stopped_unclean``: it was cut off


async def _record(port: int) -> None:
    async with AtpClient(f"127.0.0.1:{port}") as client:
        await client.record_events([receipt("stock", "A", "DC", 5)])
