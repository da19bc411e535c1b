"""What an idle service costs: the CPU of ``atp-service serve`` when nothing calls it, beside the
no-op gRPC server's (``noop_server.py``) over the same seconds.

An idle process still wakes for its timers (the loop-lag monitor, housekeeping, the owner check,
the input streams' blocking reads); on a VM each wake-up of an idle process costs far more than
the work it runs. Both servers start on this host against an embedded Redis (AOF everysec, its
unix socket, as ``serve`` reaches the Redis it starts itself), settle for ``--settle`` seconds,
then their CPU is read ``--rounds`` times over ``--seconds`` each. One JSON line per round:
milliseconds of CPU per second of each, and the service's share of one core.

    python benchmarks/idle_cost.py [--seconds 10] [--rounds 3] [--settle 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atp_service import EmbeddedRedis
from benchmarks.open_loop import cpu_seconds
from benchmarks.ports import held_port
from benchmarks.throughput import ROOT, serve_command, service_ready, start


def measure(args: argparse.Namespace, tmp: Path) -> None:
    noop = start([sys.executable, str(ROOT / "benchmarks" / "noop_server.py"), "--port", str(held_port())],
                 lambda: "ready" in (tmp / "noop.log").read_text(), tmp / "noop.log")
    try:
        with EmbeddedRedis(tmp / "redis", appendfsync="everysec", unix_socket=True) as redis_server:
            service = start(serve_command(redis_server.local_url, held_port()), service_ready(tmp / "service.log"),
                            tmp / "service.log")
            try:
                time.sleep(args.settle)  # start-up's own work (recovery, the first snapshot checks) is over
                for _ in range(args.rounds):
                    before = cpu_seconds(noop.pid), cpu_seconds(service.pid)
                    time.sleep(args.seconds)
                    noop_ms, service_ms = ((cpu_seconds(p.pid) - b) / args.seconds * 1000
                                           for p, b in zip((noop, service), before, strict=True))
                    print(json.dumps({"seconds": args.seconds, "noop_cpu_ms_per_s": round(noop_ms, 2),
                                      "service_cpu_ms_per_s": round(service_ms, 2),
                                      "service_core_share": f"{service_ms / 10:.2f} %"}), flush=True)
            finally:
                service.terminate()
                service.wait(60)
    finally:
        noop.terminate()
        noop.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of one reading")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds idle before the first reading")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="atp-idle-") as tmp:
        measure(args, Path(tmp))


if __name__ == "__main__":
    main()
