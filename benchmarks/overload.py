"""Twice the sustainable rate: does the service shed at once, keep its memory flat, honour deadlines?

1. Capacity: unary ``Reserve`` with 64 calls in flight for --seconds (closed loop).
2. Overload: calls started at 2 x that rate (open loop) for --seconds, each with a 1 s deadline.
Reports per outcome (OK, RESOURCE_EXHAUSTED, CANCELLED, DEADLINE_EXCEEDED, …) the count and latency
percentiles, and the service's resident memory before and after the overload. A call refused by
gRPC core because the bounded queue ahead of the service (max_pending_calls) is full is answered
CANCELLED with the default ``classic`` HTTP/2 transport (nobody else cancels here) and
RESOURCE_EXHAUSTED with ``--http2-transport promise``.

    python benchmarks/overload.py [--seconds 5] [--max-pending-calls N] [--http2-transport promise]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atp_client import AtpClient
from atp_service import EmbeddedRedis
from atp_service.config import TRANSPORTS, ServiceConfig
from benchmarks.compare import Tally, Workload, grpc_unary, seed_service
from benchmarks.ingest import spawn
from benchmarks.open_loop import latency_s, open_loop
from benchmarks.ports import held_port

ROOT = Path(__file__).resolve().parent.parent


def served(metrics_port: int) -> tuple[float, float]:
    """From the service's own metrics: Reserve calls its handlers ran (any outcome), and calls gRPC
    core started but never answered — refused at the door (``atp_grpc_server_calls_started_total`` minus
    ``atp_grpc_server_calls_completed_total``)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    handled = _total(body, "atp_rpc_duration_seconds_count", 'method="Reserve"')
    return handled, _total(body, "atp_grpc_server_calls_started_total") - _total(
        body, "atp_grpc_server_calls_completed_total")


def _total(body: str, name: str, having: str = "") -> float:
    """The sum of the series of ``name`` in a metrics page (those whose labels contain ``having``)."""
    values = [float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
              if line.split("{", 1)[0].split(" ", 1)[0] == name and having in line]
    if not values and not having:  # a renamed metric must not read as zero refusals
        raise RuntimeError(f"the service's metrics have no {name}")
    return sum(values)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def overload(target: str, w: Workload, rate: float, seconds: float) -> dict[str, list[float]]:
    by_outcome: dict[str, list[float]] = {}
    pick = w.picker(9)
    async with AtpClient(target, timeout_s=1.0) as client:
        async def one(n: int, due: float) -> None:
            started = time.perf_counter()
            sku, loc = pick()
            try:
                await client.reserve(f"o-{n}", [(sku, loc, 1)], ttl_seconds=3600)
                outcome = "OK"
            except grpc.aio.AioRpcError as exc:
                outcome = exc.code().name
            by_outcome.setdefault(outcome, []).append(latency_s(due, started) * 1000)  # a late start counts

        await open_loop(rate, seconds, one)
    return by_outcome


CPU_CGROUP = Path("/sys/fs/cgroup/cpu")  # cgroup v1's cpu controller, as on this machine
QUOTA_PERIOD_US = 5_000


@contextmanager
def cpu_quota(pid: int, cpus: float) -> Iterator[None]:
    """Hold process ``pid`` (all its threads) to ``cpus`` CPUs with a CFS quota, for the block."""
    group = CPU_CGROUP / f"atp-overload-{os.getpid()}"
    try:
        group.mkdir()
    except OSError as exc:
        raise SystemExit(f"--service-cpus needs root and cgroup v1's cpu controller at {CPU_CGROUP} ({exc})") from None
    try:
        # A short period: a throttled process stops all its threads (gRPC core's, which refuse calls,
        # too) until the period ends; 100 ms (the default) would show up as refusal latency.
        (group / "cpu.cfs_period_us").write_text(str(QUOTA_PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(int(cpus * QUOTA_PERIOD_US)))
        (group / "cgroup.procs").write_text(str(pid))
        yield
    finally:
        if Path(f"/proc/{pid}").exists():  # back to the root group, or the group cannot be removed
            (CPU_CGROUP / "cgroup.procs").write_text(str(pid))
        group.rmdir()


async def run(args: argparse.Namespace, tmp: Path) -> list[dict[str, object]]:
    with EmbeddedRedis(tmp / "redis", appendfsync="everysec") as redis_server:
        port, metrics_port = held_port(), held_port()
        proc = spawn(redis_server.url, port, tmp / "service.log", metrics_port)
        try:
            target = f"127.0.0.1:{port}"
            async with AtpClient(target) as client:
                await client.wait_ready(timeout_s=60)
            w = Workload("uniform", [(f"s-{i:04d}", f"l-{j}") for i in range(1000) for j in range(10)], 1_000_000)
            await seed_service(target, w)
            with cpu_quota(proc.pid, args.service_cpus) if args.service_cpus else nullcontext():
                capacity, _ = await grpc_unary(target, w, "cap", args.seconds, 64, Tally())
                before, (handled_before, door_before) = rss_mb(proc.pid), served(metrics_port)
                outcomes = await overload(target, w, 2 * capacity, args.seconds)
                after, (handled, door) = rss_mb(proc.pid), served(metrics_port)
            handled, door = handled - handled_before, door - door_before
        finally:
            proc.terminate()
            proc.wait(30)
    sent = sum(len(v) for v in outcomes.values())
    rows: list[dict[str, object]] = [{"max_pending_calls": int(os.environ.get("ATP_MAX_PENDING_CALLS", 0))
                                      or ServiceConfig().max_pending_calls,
                                      "http2_transport": os.environ.get("ATP_HTTP2_TRANSPORT")
                                      or ServiceConfig().http2_transport, "service_cpus": args.service_cpus,
                                      "capacity_ops": round(capacity), "offered_ops": round(2 * capacity),
                                      "client_calls": sent, "server_handled": round(handled),
                                      "server_counted_refused_at_door": round(door),
                                      "rss_mb_before": round(before, 1), "rss_mb_after": round(after, 1)}]
    for outcome, lat in sorted(outcomes.items()):
        rows.append({"outcome": outcome, "count": len(lat), "p50_ms": round(float(np.percentile(lat, 50)), 2),
                     "p99_ms": round(float(np.percentile(lat, 99)), 2)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-pending-calls", type=int, default=None,
                        help="the service's max_pending_calls (default: its own default)")
    parser.add_argument("--service-cpus", type=float, default=None,
                        help="hold the service to this many CPUs (a CFS quota; needs root and cgroup v1's cpu "
                             "controller) so that this Python load generator can offer twice its capacity")
    parser.add_argument("--http2-transport", choices=TRANSPORTS, default=None,
                        help="the service's http2_transport (default: its own default)")
    args = parser.parse_args()
    if args.max_pending_calls is not None:
        os.environ["ATP_MAX_PENDING_CALLS"] = str(args.max_pending_calls)  # the service reads its env
    if args.http2_transport is not None:
        os.environ["ATP_HTTP2_TRANSPORT"] = args.http2_transport
    with tempfile.TemporaryDirectory(prefix="atp-overload-") as tmp:
        for row in asyncio.run(run(args, Path(tmp))):
            print(json.dumps(row))


if __name__ == "__main__":
    main()
