"""CPU one health probe costs: ``python -m atp_service.app.healthcheck``, as the Kubernetes exec probes run it.

    python benchmarks/probe_cost.py [--probes 20]

A real ``redis-server`` and ``atp-service serve`` (plaintext, started here); the probe then runs ``--probes``
times, one after the other, against it. The figure is the probes' own CPU (user + system, ``getrusage`` of
the children waited for), not wall time: the host may be shared. Each probe must answer ``SERVING`` (exit 0).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atp_client import AtpClient
from atp_service import EmbeddedRedis
from benchmarks.ingest import spawn
from benchmarks.ports import held_port

ROOT = Path(__file__).resolve().parent.parent


def children_cpu() -> tuple[float, float]:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime, used.ru_stime


def probes(port: int, n: int) -> dict[str, float]:
    env = {**os.environ, "ATP_HOST": "127.0.0.1", "ATP_PORT": str(port)}
    user0, system0 = children_cpu()
    for _ in range(n):
        subprocess.run([sys.executable, "-m", "atp_service.app.healthcheck"], env=env, cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    user, system = children_cpu()
    return {"cpu_s_per_probe": round((user - user0 + system - system0) / n, 3),
            "user_s_per_probe": round((user - user0) / n, 3), "system_s_per_probe": round((system - system0) / n, 3)}


async def ready(port: int) -> None:
    async with AtpClient(f"127.0.0.1:{port}") as client:
        await client.wait_ready(timeout_s=120)


def measure(n: int, tmp: Path) -> dict[str, float]:
    with EmbeddedRedis(tmp / "redis") as server:
        port = held_port()
        service = spawn(server.url, port, tmp / "service.log")
        try:
            asyncio.run(ready(port))
            return {"probes": n, **probes(port, n)}
        finally:
            service.terminate()
            service.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure(args.probes, Path(tmp))))


if __name__ == "__main__":
    main()
