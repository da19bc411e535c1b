"""Facts applied per second from the input streams, end to end, and recovery after them.

1,000,000 facts over 100,000 positions (10,000 SKUs x 10 locations) are put on the two input
streams before the service starts (Redis mass insertion through ``redis-cli --pipe``). Then:

  facts_per_s  entries already in Redis -> decoded, applied in event-time order, durable in the
               shard logs and acknowledged (consumer group lag 0, nothing pending);
  recovery_s   the service is killed with -9 (no final snapshot) and restarted: time until
               health says SERVING, i.e. snapshots loaded and the log tail replayed.

Rounds are independent (a fresh Redis each; the machine is shared and drifts). Prints one JSON
object: {"facts_per_s": ..., "recovery_s": ... (medians over rounds), "facts": ..., "positions": ...,
"rounds_facts_per_s": [...], "rounds_recovery_s": [...]}.

    python benchmarks/ingest.py [--facts 1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atp_client import AtpClient
from atp_service import EmbeddedRedis
from benchmarks.ports import held_port
from benchmarks.throughput import serve_command

ROOT = Path(__file__).resolve().parent.parent
SKUS, LOCATIONS = 10_000, 10
STREAMS = ("atp:in:pos", "atp:in:wms")


def resp_command(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n"]
    for p in parts:
        out.append(f"${len(p.encode())}\r\n{p}\r\n")
    return "".join(out).encode()


def preload(redis_server: EmbeddedRedis, facts: int) -> None:
    """Mass insertion: the RESP of every XADD, piped through redis-cli (the documented fast path)."""
    rng = random.Random(11)
    now = int(time.time() * 1000)
    chunks = []
    for n in range(facts):
        sku, loc = f"sku-{rng.randrange(SKUS):05d}", f"loc-{rng.randrange(LOCATIONS):02d}"
        roll = rng.random()
        kind, qty = ("SALE", rng.randint(1, 3)) if roll < 0.6 else (
            ("RECEIPT", rng.randint(1, 50)) if roll < 0.85 else (
                ("RETURN", 1) if roll < 0.93 else (("ADJUST", rng.choice((-2, -1, 1))) if roll < 0.98
                                                   else ("COUNT", rng.randint(0, 200)))))
        stream = STREAMS[n % 2]
        chunks.append(resp_command("XADD", stream, "*", "event_id", f"f{n}", "source", stream[-3:], "kind", kind,
                            "sku", sku, "location", loc, "quantity", str(qty),
                            "event_time_ms", str(now - 3_600_000 + rng.randrange(3_600_000))))
    done = subprocess.run(["redis-cli", "-p", str(redis_server.port), "--pipe"], input=b"".join(chunks),
                          capture_output=True, check=True)
    assert b"errors: 0" in done.stdout, done.stdout


def spawn(redis_url: str, port: int, log: Path, metrics_port: int = -1, *extra: str) -> subprocess.Popen[bytes]:
    """``serve_command`` started without waiting for it, its output appended to ``log``."""
    return subprocess.Popen(serve_command(redis_url, port, metrics_port, *extra), stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, cwd=ROOT)


async def ready(port: int) -> None:
    async with AtpClient(f"127.0.0.1:{port}") as client:
        await client.wait_ready(timeout_s=600)


def acknowledged(r: redis.Redis) -> int:
    """Entries the service has already read and acknowledged (it starts reading just before SERVING)."""
    total = 0
    for stream in STREAMS:
        groups = r.xinfo_groups(stream)
        if groups:
            total += (groups[0].get("entries-read") or 0) - groups[0]["pending"]
    return total


def consumed(r: redis.Redis) -> bool:
    for stream in STREAMS:
        groups = r.xinfo_groups(stream)
        if not groups or groups[0]["pending"] or groups[0]["lag"]:
            return False
    return True


def one_round(facts: int) -> tuple[float, float]:
    """A fresh Redis holding ``facts`` input entries: (facts/s applied, seconds to recover after kill -9)."""
    with tempfile.TemporaryDirectory(prefix="atp-ingest-") as tmp, \
            EmbeddedRedis(Path(tmp) / "redis", appendfsync="everysec") as redis_server:
        preload(redis_server, facts)
        r = redis.Redis.from_url(redis_server.url)
        port = held_port()
        log = Path(tmp) / "service.log"
        proc = spawn(redis_server.url, port, log)
        asyncio.run(ready(port))
        started = time.perf_counter()
        before = acknowledged(r)  # applied before SERVING: not counted in the timed part
        while not consumed(r):
            time.sleep(0.05)
            if proc.poll() is not None:
                raise SystemExit(f"service died: {log.read_text()[-2000:]}")
        if before > facts // 2:
            raise SystemExit(f"{before} of {facts} facts were applied before the service said SERVING: "
                             "too few to time; use more --facts")
        facts_per_s = (facts - before) / (time.perf_counter() - started)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        started = time.perf_counter()
        proc = spawn(redis_server.url, port, log)
        asyncio.run(ready(port))
        recovery_s = time.perf_counter() - started
        proc.terminate()
        proc.wait()
    return facts_per_s, recovery_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="independent rounds (fresh Redis each); medians are reported, every round listed")
    args = parser.parse_args()
    runs = [one_round(args.facts) for _ in range(args.rounds)]
    rates, recoveries = [rate for rate, _ in runs], [rec for _, rec in runs]
    print(json.dumps({"facts_per_s": round(statistics.median(rates)),
                      "recovery_s": round(statistics.median(recoveries), 2),
                      "facts": args.facts, "positions": SKUS * LOCATIONS,
                      "rounds_facts_per_s": [round(x) for x in rates],
                      "rounds_recovery_s": [round(x, 2) for x in recoveries]}))


if __name__ == "__main__":
    main()
