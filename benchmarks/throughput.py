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
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np

from atp_service import AtpClient, EmbeddedRedis, free_port
from atp_service.pb.atp.v1 import atp_pb2 as pb

SKUS, LOCATIONS = 10_000, 10
IN_FLIGHT = 64
STREAMS = 4
ROOT = Path(__file__).resolve().parent.parent


def position(rng: random.Random) -> tuple[str, str]:
    return f"sku-{rng.randrange(SKUS):05d}", f"loc-{rng.randrange(LOCATIONS):02d}"


async def seed(client: AtpClient) -> None:
    facts = [pb.Fact(event_id=f"seed-{s}-{loc}", source="bench", kind=pb.COUNT, sku=f"sku-{s:05d}",
                     location=f"loc-{loc:02d}", quantity=1_000_000, event_time_ms=int(time.time() * 1000) - 1000)
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


async def unary(target: str, seconds: float, tag: str) -> tuple[float, list[float]]:
    clients = [AtpClient(target)]
    rng = random.Random(1)

    async def one(worker: int, n: int) -> int:
        sku, loc = position(rng)
        resp = await clients[0].reserve(f"{tag}-{worker}-{n}", [(sku, loc, 1)], ttl_seconds=3600)
        assert resp.state == pb.HELD, resp
        return 1

    try:
        await run_for(1.0, IN_FLIGHT, lambda w, n: one(w, -n - 1))  # warm-up
        return await run_for(seconds, IN_FLIGHT, one)
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
            out.append(pb.ReserveRequest(reservation_id=f"{tag}-{stream_no}-{n}-{i}", ttl_seconds=3600,
                                         lines=[pb.Line(sku=sku, location=loc, quantity=1)]))
        return out

    async def drive(stream_no: int, stop_at: float, count: bool) -> None:
        nonlocal done
        call = clients[stream_no].stub.ReserveStream()
        sent: list[float] = []
        n = 0
        for _ in range(per_stream):
            sent.append(time.perf_counter())
            await call.write(pb.ReserveBatch(reservations=make(stream_no, n)))
            n += 1
        while sent:
            result = await call.read()
            latency = (time.perf_counter() - sent.pop(0)) * 1000
            assert all(o.code == 0 and o.response.state == pb.HELD for o in result.outcomes)
            if count:
                latencies.append(latency)
                done += len(result.outcomes)
            if time.perf_counter() < stop_at:
                sent.append(time.perf_counter())
                await call.write(pb.ReserveBatch(reservations=make(stream_no, n)))
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
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 60
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{cmd[2:4]} did not start; see {log}")
        time.sleep(0.1)
    return proc


async def measure(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """Both servers up at once; rounds alternate ceiling and service so drift hits both alike."""
    ceiling_port, service_port = free_port(), free_port()
    runs: dict[tuple[str, str], list[tuple[float, list[float]]]] = {}
    noop = start([sys.executable, str(ROOT / "benchmarks" / "noop_server.py"), "--port", str(ceiling_port)],
                 lambda: "ready" in (tmp / "noop.log").read_text(), tmp / "noop.log")
    with EmbeddedRedis(tmp / "redis", appendfsync="everysec") as redis_server:
        service = start([sys.executable, "-m", "atp_service", "serve", "--redis-url", redis_server.url,
                         "--port", str(service_port), "--metrics-port", "-1", "--no-demo", "--log-level", "WARNING"],
                        lambda: True, tmp / "service.log")
        try:
            async with AtpClient(f"127.0.0.1:{service_port}", timeout_s=60) as client:
                await client.wait_ready()
                await seed(client)
            for r in range(args.rounds):
                for mode in ("unary", "stream"):
                    for system, port in (("ceiling", ceiling_port), ("service", service_port)):
                        target, tag = f"127.0.0.1:{port}", f"{system[0]}{mode[0]}{r}"
                        result = (await unary(target, args.seconds, tag) if mode == "unary"
                                  else await stream(target, args.seconds, args.batch, tag))
                        runs.setdefault((mode, system), []).append(result)
        finally:
            service.terminate()
            service.wait()
            noop.terminate()
            noop.wait()
    out = []
    for mode in ("unary", "stream"):
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
        })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per round, mode and system")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    parser.add_argument("--batch", type=int, default=200, help="reservations per stream message")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="atp-bench-") as tmp:
        for row in asyncio.run(measure(args, Path(tmp))):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
