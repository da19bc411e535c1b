"""Reservation throughput of the service against the Python gRPC ceiling, on this machine.

One invocation, one local Redis (AOF, appendfsync=everysec: the README's default):
  (a) a no-op gRPC server with the same message shapes (benchmarks/noop_server.py);
  (b) the service (``atp-service serve``), 10,000 SKUs x 10 locations stocked.
The same client drives both with 64 requests in flight, uniform over the positions:
  unary  - 64 concurrent Reserve calls of one line each;
  stream - 64 ReserveStream messages in flight (over 4 streams), each a batch of --batch reservations.
Rounds alternate ceiling and service (both servers stay up) so that drift of a shared machine hits
both alike. Prints one JSON object per mode: mode, ceiling_ops, service_ops (medians over rounds),
ratio (median of the per-round ratios), p50_ms, p99_ms (service latency of one call, or of one
batch message in stream mode, over all rounds).

    python benchmarks/throughput.py [--seconds 5] [--rounds 3] [--batch 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atp_client import AtpClient, duration, timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import EmbeddedRedis
from benchmarks.ports import held_port

SKUS, LOCATIONS = 10_000, 10
IN_FLIGHT = 64
STREAMS = 4
ROOT = Path(__file__).resolve().parent.parent


def position(rng: random.Random) -> tuple[str, str]:
    return f"sku-{rng.randrange(SKUS):05d}", f"loc-{rng.randrange(LOCATIONS):02d}"


async def seed(client: AtpClient) -> None:
    facts = [pb.Fact(event_id=f"seed-{s}-{loc}", source="bench", kind=pb.FACT_KIND_COUNT, sku=f"sku-{s:05d}",
                     location=f"loc-{loc:02d}", quantity=1_000_000,
                     event_time=timestamp(int(time.time() * 1000) - 1000))
             for s in range(SKUS) for loc in range(LOCATIONS)]
    for i in range(0, len(facts), 5000):
        await client.record_events(facts[i:i + 5000])


async def run_for(seconds: float, workers: int, one: Callable[[int, int], Coroutine[Any, Any, int]]
                  ) -> tuple[float, list[float]]:
    """Run ``one(worker, n)`` in ``workers`` loops; returns (ops/s, latencies in ms)."""
    latencies: list[float] = []
    done = 0
    stop_at = time.perf_counter() + seconds

    async def loop(worker: int) -> None:
        nonlocal done
        n = 0
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            finished = await one(worker, n)  # not `done += await ...`: that reads `done` before awaiting
            done += finished
            latencies.append((time.perf_counter() - started) * 1000)
            n += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(w) for w in range(workers)))
    return done / (time.perf_counter() - started), latencies


async def unary(target: str, seconds: float, tag: str, in_flight: int = IN_FLIGHT) -> tuple[float, list[float]]:
    clients = [AtpClient(target)]
    rng = random.Random(1)

    async def one(worker: int, n: int) -> int:
        sku, loc = position(rng)
        resp = await clients[0].reserve(f"{tag}-{worker}-{n}", [(sku, loc, 1)], ttl_seconds=3600)
        assert resp.state == pb.RESERVATION_STATE_HELD, resp
        return 1

    try:
        await run_for(1.0, in_flight, lambda w, n: one(w, -n - 1))  # warm-up
        return await run_for(seconds, in_flight, one)
    finally:
        for c in clients:
            await c.close()


async def stream(target: str, seconds: float, batch: int, tag: str) -> tuple[float, list[float]]:
    """STREAMS bidirectional streams, IN_FLIGHT/STREAMS batch messages in flight on each."""
    rng = random.Random(2)
    per_stream = IN_FLIGHT // STREAMS
    latencies: list[float] = []
    done = 0
    clients = [AtpClient(target) for _ in range(STREAMS)]

    def make(stream_no: int, n: int) -> list[pb.ReserveRequest]:
        out = []
        for i in range(batch):
            sku, loc = position(rng)
            out.append(pb.ReserveRequest(reservation_id=f"{tag}-{stream_no}-{n}-{i}", ttl=duration(3600),
                                         lines=[pb.Line(sku=sku, location=loc, quantity=1)]))
        return out

    async def drive(stream_no: int, stop_at: float, count: bool) -> None:
        nonlocal done
        call = clients[stream_no].stub.ReserveStream()
        sent: list[float] = []
        n = 0
        for _ in range(per_stream):
            sent.append(time.perf_counter())
            await call.write(pb.ReserveStreamRequest(reservations=make(stream_no, n)))
            n += 1
        while sent:
            result = await call.read()
            latency = (time.perf_counter() - sent.pop(0)) * 1000
            assert all(o.response.state == pb.RESERVATION_STATE_HELD for o in result.outcomes)
            if count:
                latencies.append(latency)
                done += len(result.outcomes)
            if time.perf_counter() < stop_at:
                sent.append(time.perf_counter())
                await call.write(pb.ReserveStreamRequest(reservations=make(stream_no, n)))
                n += 1
        await call.done_writing()

    try:
        await asyncio.gather(*(drive(s, time.perf_counter() + 1.0, False) for s in range(STREAMS)))  # warm-up
        tag += "m"
        started = time.perf_counter()
        await asyncio.gather(*(drive(s, started + seconds, True) for s in range(STREAMS)))
        return done / (time.perf_counter() - started), latencies
    finally:
        for c in clients:
            await c.close()


def start(cmd: list[str], ready: Callable[[], bool], log: Path) -> subprocess.Popen[bytes]:
    """Start a server and wait until ``ready()``; if it exits or takes over a minute, fail with its
    log's tail (the log lives in a temporary directory that is gone by the time anyone looks)."""
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 60
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{cmd[2:4]} did not start (exit {proc.wait()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return proc


def serve_command(redis_url: str, port: int, metrics_port: int = -1, *extra: str) -> list[str]:
    """``atp-service serve`` for a benchmark: no demo, no auth, on the given Redis; ``extra`` flags appended."""
    return [sys.executable, "-m", "atp_service", "serve", "--redis-url", redis_url, "--port", str(port),
            "--metrics-port", str(metrics_port), "--no-demo", "--auth", "off", "--log-level", "WARNING", *extra]


def service_ready(log: Path) -> Callable[[], bool]:
    """``atp-service serve`` prints this once it has recovered and serves."""
    return lambda: "ATP service ready" in log.read_text()


async def measure(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """Both servers up at once; rounds alternate ceiling and service so drift hits both alike."""
    ceiling_port, service_port, metrics_port = held_port(), held_port(), held_port()
    runs: dict[tuple[str, str], list[tuple[float, list[float]]]] = {}
    grouping: dict[str, Counter[str]] = {"unary": Counter(), "stream": Counter()}
    scaling: list[dict[str, Any]] = []
    noop = start([sys.executable, str(ROOT / "benchmarks" / "noop_server.py"), "--port", str(ceiling_port)],
                 lambda: "ready" in (tmp / "noop.log").read_text(), tmp / "noop.log")
    with EmbeddedRedis(tmp / "redis", appendfsync="everysec") as redis_server:
        service = start(serve_command(redis_server.url, service_port, metrics_port),
                        service_ready(tmp / "service.log"), tmp / "service.log")
        try:
            async with AtpClient(f"127.0.0.1:{service_port}", timeout_s=60) as client:
                await client.wait_ready()
                await seed(client)
            for r in range(args.rounds):
                for mode in ("unary", "stream"):
                    for system, port in (("ceiling", ceiling_port), ("service", service_port)):
                        target, tag = f"127.0.0.1:{port}", f"{system[0]}{mode[0]}{r}"
                        before = scrape(metrics_port)
                        result = (await unary(target, args.seconds, tag) if mode == "unary"
                                  else await stream(target, args.seconds, args.batch, tag))
                        runs.setdefault((mode, system), []).append(result)
                        if system == "service":
                            grouping[mode].update(scrape(metrics_port) - before)
            for n in args.scaling:
                ops, _ = await unary(f"127.0.0.1:{service_port}", args.seconds, f"x{n}", in_flight=n)
                scaling.append({"mode": "unary_scaling", "in_flight": n, "service_ops": round(ops)})
        finally:
            service.terminate()
            service.wait()
            noop.terminate()
            noop.wait()
    out = []
    for mode in ("unary", "stream"):
        g = grouping[mode]
        ceiling = [ops for ops, _ in runs[(mode, "ceiling")]]
        service_runs = runs[(mode, "service")]
        service_ops = [ops for ops, _ in service_runs]
        ratios = [s / c for s, c in zip(service_ops, ceiling, strict=True)]
        lat = [x for _, lats in service_runs for x in lats]
        out.append({
            "mode": mode, "ceiling_ops": round(float(np.median(ceiling))),
            "service_ops": round(float(np.median(service_ops))), "ratio": round(float(np.median(ratios)), 3),
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "rounds": args.rounds,
            # How much group commit grouped: commands per shard log entry, entries per Redis call.
            "batch_mean": round(g["batch_sum"] / max(1, g["batch_count"]), 2),
            "entries_per_redis_call": round(g["pipeline_sum"] / max(1, g["pipeline_count"]), 2),
        })
    return out + scaling


def scrape(port: int) -> Counter[str]:
    """The service's group-commit counters from its Prometheus endpoint."""
    names = {"atp_shard_batch_size_sum": "batch_sum", "atp_shard_batch_size_count": "batch_count",
             "atp_log_pipeline_entries_sum": "pipeline_sum", "atp_log_pipeline_entries_count": "pipeline_count"}
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: Counter[str] = Counter()
    for line in body.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            out[names[name]] = int(float(value))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per round, mode and system")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    parser.add_argument("--scaling", type=lambda s: [int(x) for x in s.split(",")], default=[],
                        help="also run unary against the service with these in-flight counts, e.g. 16,64,128,256")
    parser.add_argument("--batch", type=int, default=200, help="reservations per stream message")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="atp-bench-") as tmp:
        for row in asyncio.run(measure(args, Path(tmp))):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
