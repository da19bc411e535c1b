"""``make bench-peak SCENARIO=… DURATION=…``: a service of its own, locust headless against it, a summary.

Starts an embedded redis-server (AOF ``everysec``) and ``atp-service serve`` with the demo estate
on free ports, runs ``locust -f benchmarks/locustfile.py --headless`` with the scenario's load
shape, writes CSV and the HTML report under ``benchmarks/results/``, and prints one screen: calls
per name with failures and latency percentiles, the invariant check, the service's oversold and
shed counters. Exits with locust's code (1 on any failure or broken invariant).

    python benchmarks/peak_run.py --scenario flash_sale --duration 60 [--users 60] [--processes 1] \
        [locust options: --stream-users 2 --stream-batch 50 --flash-stock 10 …]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atp_client import AtpClient
from atp_service import EmbeddedRedis
from benchmarks.ports import held_port

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("flash_sale", "holiday_peak", "steady")


def service_metrics(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    wanted = ("atp_oversold_units", "atp_shed_total", "atp_log_append_failures_total")
    out: dict[str, float] = {}
    for line in body.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            out[name] = float(value)
    return out


def summary(stats_csv: Path) -> str:
    lines = [f"{'name':34} {'calls':>8} {'fails':>6} {'rps':>8} {'p50':>6} {'p95':>6} {'p99':>6}  (ms)"]
    with stats_csv.open() as f:
        for r in csv.DictReader(f):
            lines.append(f"{r['Name'][:34]:34} {r['Request Count']:>8} {r['Failure Count']:>6} "
                         f"{float(r['Requests/s']):>8.1f} {r['50%']:>6} {r['95%']:>6} {r['99%']:>6}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=SCENARIOS, default="holiday_peak")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--users", type=int, default=60, help="peak users of the load shape")
    parser.add_argument("--processes", type=int, default=1, help="locust --processes (worker processes)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args, locust_args = parser.parse_known_args()
    args.out.mkdir(parents=True, exist_ok=True)
    run_id = time.strftime("%Y%m%d-%H%M%S")
    prefix = args.out / f"{args.scenario}-{run_id}"
    with tempfile.TemporaryDirectory(prefix="atp-peak-") as tmp, \
            EmbeddedRedis(Path(tmp) / "redis", appendfsync="everysec") as redis_server:
        port, metrics_port = held_port(), held_port()
        log = (args.out / f"{args.scenario}-{run_id}-service.log").open("wb")
        service = subprocess.Popen(
            [sys.executable, "-m", "atp_service", "serve", "--redis-url", redis_server.url, "--port", str(port),
             "--metrics-port", str(metrics_port), "--log-level", "WARNING"], cwd=ROOT, stdout=log,
            stderr=subprocess.STDOUT)
        try:
            asyncio.run(_ready(port))
            cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "benchmarks" / "locustfile.py"), "--headless",
                   "--host", f"127.0.0.1:{port}", "--csv", str(prefix), "--html", f"{prefix}.html",
                   "--only-summary", "--loglevel", "WARNING", "--scenario", args.scenario,
                   "--duration", str(args.duration), "--peak-users", str(args.users), "--run-id", run_id]
            if args.processes > 1:
                cmd += ["--processes", str(args.processes)]
            done = subprocess.run([*cmd, *locust_args], cwd=ROOT, timeout=args.duration + 300)
            metrics = service_metrics(metrics_port)
        finally:
            service.terminate()
            service.wait(60)
    print(f"\n== {args.scenario}, {args.duration:.0f} s, peak {args.users} users "
          f"({args.processes} locust process{'es' if args.processes > 1 else ''}) ==")
    stats = Path(f"{prefix}_stats.csv")
    print(summary(stats) if stats.exists() else "locust wrote no statistics (see its output above)")
    print("service:", ", ".join(f"{k}={v:g}" for k, v in metrics.items()))
    print(f"reports: {prefix}_stats.csv, {prefix}.html; locust exit code {done.returncode}")
    return done.returncode


async def _ready(port: int) -> None:
    async with AtpClient(f"127.0.0.1:{port}") as client:
        await client.wait_ready(timeout_s=120)


if __name__ == "__main__":
    sys.exit(main())
