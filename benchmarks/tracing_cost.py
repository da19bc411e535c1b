"""What tracing costs: the service's CPU per unary Reserve and its latency in open loop, with tracing
off, on at a sampled ratio, and on for every call — each exporting to a real OTLP/HTTP receiver on
loopback that reads and acknowledges every batch (in this process, on a thread of its own).

    python benchmarks/tracing_cost.py [--rate 1000] [--seconds 8] [--ratios 0,0.01,1]

Prints one JSON line per setting: ratio (``off``: no ``--tracing-endpoint``), ops, p50/p99 ms,
server_cpu (cores) and cpu_us_per_call; the service runs with ``atp-service serve`` against an
embedded Redis (AOF everysec), seeded with ``--positions`` positions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import redis

from atp_service import EmbeddedRedis
from benchmarks.compare import Workload, seed_service
from benchmarks.loopback_http import serving
from benchmarks.open_loop import add_settle_limit, measured_open_loop, use_settle_limit
from benchmarks.ports import held_port
from benchmarks.throughput import serve_command, service_ready, start


class _Sink(BaseHTTPRequestHandler):
    """Reads each export and answers 200 with an empty ExportTraceServiceResponse."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@contextmanager
def otlp_sink() -> Iterator[str]:
    with serving(_Sink) as url:
        yield f"{url}/v1/traces"


async def _one(redis_url: str, ratio: str, sink: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    port, log = held_port(), tmp / f"service-{ratio}.log"
    extra = [] if ratio == "off" else ["--tracing-endpoint", sink, "--tracing-sample-ratio", ratio]
    proc = start(serve_command(redis_url, port, -1, *extra), service_ready(log), log)
    try:
        target = f"127.0.0.1:{port}"
        w = Workload("uniform", [(f"s-{i:06d}", "l-1") for i in range(args.positions)], 1_000_000)
        await seed_service(target, w)
        m = await measured_open_loop(target, proc.pid, w.picker(5), f"tr{ratio}", args.rate, args.seconds)
    finally:
        proc.terminate()
        proc.wait(60)
    lat = m["lat"]
    return {"ratio": ratio, "rate": args.rate, "ops": round(m["ops"]),
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "server_cpu": m["server_cpu"],
            "cpu_us_per_call": round(m["server_cpu_s"] / max(m["calls"], 1) * 1e6),  # the calls measured, unrounded
            "refused": m["refused"]}


async def _run(args: argparse.Namespace, tmp: Path) -> None:
    with EmbeddedRedis(tmp / "redis", appendfsync="everysec") as redis_server, otlp_sink() as sink:
        for ratio in ["off", *args.ratios.split(",")]:
            redis.Redis.from_url(redis_server.url).flushall()
            print(json.dumps(await _one(redis_server.url, ratio, sink, args, tmp)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="calls started per second")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--positions", type=int, default=10_000)
    parser.add_argument("--ratios", default="0,0.01,1", help="sample ratios to measure besides tracing off")
    add_settle_limit(parser)
    args = parser.parse_args()
    use_settle_limit(args.settle_limit)
    with tempfile.TemporaryDirectory(prefix="atp-tracing-cost-") as tmp:
        asyncio.run(_run(args, Path(tmp)))


if __name__ == "__main__":
    main()
