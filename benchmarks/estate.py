"""A retail estate of a given shape in a running service: memory per position, load speed, a day
of facts, snapshots, recovery and read latency at that size.

Positions are ``--skus`` x ``--locations``, a fraction ``--stocked`` of them (picked by a stable
hash, so a sparse estate is the same on every run). The ERP extract is generated as a CSV, one
count per stocked position as of the start of the day, and loaded with ``atpctl stock load``
(source ``erp``), then loaded again (every row a duplicate, E8). Then ``--day-facts`` POS/WMS facts
(sales, returns, receipts) stamped over the day since, at stocked positions, through RecordEvents.
Then a graceful stop (final snapshots), a restart, a ``kill -9`` and another restart. Prints one
JSON line:

  positions, csv_mb                       the extract
  load_s, rows_per_s                      ``atpctl stock load``, start to exit (CSV to durable)
  reload_s                                the same file again
  resync_s, rss_mb_resync                 with --resync, after the day: the same file as of now (a
                                          nightly full sync: every count superseded, E8 keeps each)
  rss_mb_empty, rss_mb_loaded, rss_mb_day the service's resident memory (/proc/<pid>/status VmRSS)
  bytes_per_position                      (rss_mb_loaded - rss_mb_empty) / positions
  day_s, facts_per_s                      the day of facts
  stop_s, snapshot_bytes                  graceful stop (every shard writes a final snapshot)
  recovery_s, kill_recovery_s             restart until SERVING: from snapshots; after kill -9
  read_p50_ms, read_p99_ms                GetAvailability of 1,000 stocked keys, one call at a time

    python benchmarks/estate.py --skus 5000 --locations 300 [--stocked 1.0] [--day-facts 1000000]
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
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atp_client import AtpClient, timestamp
from atp_client._stock import launch, record_patiently
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import EmbeddedRedis
from benchmarks.ingest import ROOT, ready, spawn
from benchmarks.overload import rss_mb
from benchmarks.ports import held_port

DAY_MS = 24 * 3600 * 1000
READS = 200
"""GetAvailability calls of 1,000 keys timed after the load."""


SKU_WIDTH, LOCATION_WIDTH = 11, 8  # sku-0000001, loc-0001
ROW = SKU_WIDTH + 1 + LOCATION_WIDTH + 1 + 3 + 1  # ...,042\n: fixed width, so numpy writes it


def stocked(skus: int, locations: int, share: float, first_sku: int = 0) -> npt.NDArray[np.int64]:
    """The stocked positions of SKUs ``first_sku`` onwards as ``sku * locations + location``: a
    stable hash decides (the same estate on every run)."""
    cells = np.arange(first_sku * locations, (first_sku + skus) * locations, dtype=np.int64)
    if share >= 1:
        return cells
    mixed = (cells * np.int64(0x9E3779B1) + np.int64(0x7F4A7C15)) & np.int64(0xFFFFFFFF)
    mixed = (mixed ^ (mixed >> 15)) * np.int64(0x2C1B3C6D) & np.int64(0xFFFFFFFF)
    return cells[(mixed ^ (mixed >> 12)) < int(share * 2**32)]


def write_extract(path: Path, args: argparse.Namespace) -> int:
    """The ERP extract as CSV, 10,000 SKUs at a time; returns its rows."""
    rng = np.random.default_rng(1)
    rows = 0
    with path.open("wb") as out:
        out.write(b"sku,location,on_hand\n")
        for first in range(0, args.skus, 10_000):
            cells = stocked(min(10_000, args.skus - first), args.locations, args.stocked, first)
            table = np.full((len(cells), ROW), ord(","), dtype=np.uint8)
            _digits(table, 0, b"sku-", cells // args.locations, 7)
            _digits(table, SKU_WIDTH + 1, b"loc-", cells % args.locations, 4)
            _digits(table, SKU_WIDTH + LOCATION_WIDTH + 2, b"", rng.integers(0, 500, len(cells)), 3)
            table[:, -1] = ord("\n")
            out.write(table.tobytes())
            rows += len(cells)
    return rows


def _digits(table: npt.NDArray[np.uint8], at: int, prefix: bytes, values: npt.NDArray[np.int64], width: int) -> None:
    table[:, at: at + len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    for k in range(width):
        table[:, at + len(prefix) + width - 1 - k] = ord("0") + values // 10**k % 10


def stock_load(target: str, path: Path, as_of: int) -> float:
    """``atpctl stock load`` of ``path``, start to exit, in seconds."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "atp_client.ctl", "--target", target, "--json", "--timeout", "600",
                           "stock", "load", str(path), "--as-of", str(as_of)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'client'}"})
    assert done.returncode == 0, done.stderr[-2000:]
    return time.perf_counter() - started


def position_of(cell: int, locations: int) -> tuple[str, str]:
    return f"sku-{cell // locations:07d}", f"loc-{cell % locations:04d}"


def day_fact(n: int, position: tuple[str, str], start: int, now: int, rng: random.Random) -> pb.Fact:
    roll = rng.random()
    kind, qty, source = ((pb.FACT_KIND_SALE, rng.randint(1, 3), "pos") if roll < 0.7 else
                         (pb.FACT_KIND_RETURN, 1, "pos") if roll < 0.8 else
                         (pb.FACT_KIND_RECEIPT, rng.randint(1, 50), "wms"))
    return pb.Fact(event_id=f"day-{n}", source=source, kind=kind, sku=position[0], location=position[1], quantity=qty,
                   event_time=timestamp(rng.randint(start + 1, now - 1)))


async def send_all(target: str, facts: Iterator[pb.Fact], batch: int, inflight: int) -> tuple[int, float]:
    """Every fact through RecordEvents, ``inflight`` calls at a time: (facts sent, seconds)."""
    sent = 0
    started = time.perf_counter()
    async with AtpClient(target, timeout_s=600) as client:
        lanes = asyncio.Semaphore(inflight)
        tasks: set[asyncio.Task[None]] = set()

        async def one(chunk: list[pb.Fact]) -> None:
            try:
                results = await record_patiently(client, chunk)
                bad = [r for r in results if r.outcome == pb.FACT_OUTCOME_INVALID]
                assert not bad, bad[0]
            finally:
                lanes.release()

        chunk: list[pb.Fact] = []
        for fact in facts:
            chunk.append(fact)
            if len(chunk) == batch:
                tasks = await launch(tasks, lanes, one(chunk))  # a refused call ends the run here
                sent, chunk = sent + len(chunk), []
        if chunk:
            tasks = await launch(tasks, lanes, one(chunk))
            sent += len(chunk)
        await asyncio.gather(*tasks)
    return sent, time.perf_counter() - started


async def read_latency(target: str, keys: list[tuple[str, str]]) -> tuple[float, float]:
    rng = random.Random(5)
    times = []
    async with AtpClient(target, timeout_s=30) as client:
        for _ in range(READS):
            pick = [keys[rng.randrange(len(keys))] for _ in range(1000)]
            started = time.perf_counter()
            await client.availability(pick)
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def restarted(url: str, port: int, log: Path, shards: int) -> tuple[subprocess.Popen[bytes], float]:
    started = time.perf_counter()
    proc = spawn(url, port, log, -1, "--shards", str(shards))
    asyncio.run(ready(port))
    return proc, time.perf_counter() - started


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, float | int]:
    with EmbeddedRedis(tmp / "redis", appendfsync="everysec") as server:
        port, log = held_port(), tmp / "service.log"
        target = f"127.0.0.1:{port}"
        proc, _ = restarted(server.url, port, log, args.shards)
        out: dict[str, float | int] = {"rss_mb_empty": round(rss_mb(proc.pid))}
        now = int(time.time() * 1000)
        start = now - DAY_MS + 60_000  # the ERP extract: as of the start of the day the facts cover
        rng = random.Random(1)
        extract = tmp / "erp.csv"
        sent = write_extract(extract, args)
        load_s = stock_load(target, extract, start)
        out |= {"positions": sent, "csv_mb": round(extract.stat().st_size / 2**20), "load_s": round(load_s, 2),
                "rows_per_s": round(sent / load_s)}
        out["rss_mb_loaded"] = round(rss_mb(proc.pid))
        out["bytes_per_position"] = round((out["rss_mb_loaded"] - out["rss_mb_empty"]) * 2**20 / max(1, sent))
        out["reload_s"] = round(stock_load(target, extract, start), 2)
        cells = stocked(args.skus, args.locations, args.stocked)
        positions = [position_of(int(c), args.locations) for c in cells[np.random.default_rng(2).integers(
            0, len(cells), min(len(cells), 1_000_000))]]
        day = (day_fact(n, positions[rng.randrange(len(positions))], start, now, rng) for n in range(args.day_facts))
        facts, day_s = asyncio.run(send_all(target, day, args.batch, args.inflight))
        out |= {"day_s": round(day_s, 2), "facts_per_s": round(facts / day_s) if facts else 0,
                "rss_mb_day": round(rss_mb(proc.pid))}
        out["read_p50_ms"], out["read_p99_ms"] = (round(v, 1) for v in asyncio.run(read_latency(target, positions)))
        if args.resync:
            out["resync_s"] = round(stock_load(target, extract, int(time.time() * 1000) - 60_000), 2)
            out["rss_mb_resync"] = round(rss_mb(proc.pid))
        extract.unlink()
        started = time.perf_counter()
        proc.terminate()
        proc.wait()
        out["stop_s"] = round(time.perf_counter() - started, 2)
        client = redis.Redis.from_url(server.url)
        out["snapshot_bytes"] = sum(client.strlen(k) for k in client.scan_iter("atp:{g*}:snap"))
        proc, recovery_s = restarted(server.url, port, log, args.shards)
        out["recovery_s"] = round(recovery_s, 1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc, kill_recovery_s = restarted(server.url, port, log, args.shards)
        out["kill_recovery_s"] = round(kill_recovery_s, 1)
        proc.terminate()
        proc.wait()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skus", type=int, default=5_000)
    parser.add_argument("--locations", type=int, default=300)
    parser.add_argument("--stocked", type=float, default=1.0, help="share of positions stocked (0-1]")
    parser.add_argument("--day-facts", type=int, default=0, help="POS/WMS facts over the day after the load")
    parser.add_argument("--batch", type=int, default=10_000, help="day facts per RecordEvents call")
    parser.add_argument("--inflight", type=int, default=4, help="RecordEvents calls in flight")
    parser.add_argument("--shards", type=int, default=16, help="the service's shards")
    parser.add_argument("--resync", action="store_true", help="after the day, the extract again as of now")
    args = parser.parse_args()
    if not 0 < args.stocked <= 1:
        parser.error("--stocked: must be within (0, 1]")
    with tempfile.TemporaryDirectory(prefix="atp-estate-") as tmp:
        print(json.dumps(measure(args, Path(tmp))))


if __name__ == "__main__":
    main()
