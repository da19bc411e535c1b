"""Channel publishing under a burst: delay of stock-outs and of ordinary changes, coalescing, curation cost.

Estate: 1,000 SKUs x 300 stores, every position stocked (1-12 units). Two channels over all stores:
``web`` (one number per SKU, the network total; buffer 2, low-stock threshold 1) and ``pickup``
(one number per SKU and store). Both throttle at ``--throttle-ms`` (default 1000) per key.

1. The stock (300,000 COUNT facts) goes through the WMS input stream; the service publishes
   every channel's baseline; the benchmark waits for it.
2. A burst of 100,000 POS facts (95 % one-unit sales, 5 % counts to 0: stock-outs) is piped
   into the POS input stream with ``redis-cli --pipe``, while this process reads both channel
   streams and stamps each update when it sees it.

  stockout_*_ms  ``published_at`` (Redis's clock when the entry was written to the channel stream)
                 - ``durable_at`` (the change was durable in the shard log), for drops to 0
  change_*_ms    the same for ordinary changes (throttled: at most one per key per interval)
  coalescing_ratio  channel updates published / facts received
  curation_us_per_sku  time re-curating (both channels) / SKUs re-curated, from the service's metrics

Targets (issue 4): stockout_p99_ms <= 50, change_p99_ms <= throttle + 50.

    python benchmarks/publish.py [--facts 100000] [--throttle-ms 1000]
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
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atp_client import AtpClient
from atp_service import EmbeddedRedis
from atp_service.storage.channel_wire import from_fields
from atp_service.storage.resp import stream_entries
from benchmarks.ingest import resp_command, spawn
from benchmarks.ports import held_port
from reservation import ChannelUpdate

ROOT = Path(__file__).resolve().parent.parent
SKUS = [f"sku-{i:05d}" for i in range(1000)]
STORES = [f"store-{i:03d}" for i in range(1, 301)]
CHANNELS = ("web", "pickup")


def estate(throttle_ms: int) -> str:
    ids = ", ".join(f'"{s}"' for s in STORES)
    return f"""
[[locations]]
type = "store"
ids = [{ids}]

[groups]
stores = {{ type = "store" }}

[[channels]]
name = "web"
sells_from = ["stores"]
buffer_units = 2
low_stock_threshold = 1
throttle_ms = {throttle_ms}
rate_limit_per_s = 5000.0

[[channels]]
name = "pickup"
sells_from = ["stores"]
per_location = true
throttle_ms = {throttle_ms}
rate_limit_per_s = 500000.0
stream_maxlen = 1000000
"""


def pipe_facts(port: int, stream: str, facts: list[tuple[str, str, str, str, int, int]]) -> None:
    """Mass insertion through redis-cli --pipe: the writer is not this (measuring) process."""
    body = b"".join(
        resp_command("XADD", stream, "*", "event_id", eid, "source", stream[-3:], "kind", kind, "sku", sku,
                     "location", loc, "quantity", str(qty), "event_time_ms", str(t))
        for eid, kind, sku, loc, qty, t in facts
    )
    done = subprocess.run(["redis-cli", "-p", str(port), "--pipe"], input=body, capture_output=True, check=True)
    assert b"errors: 0" in done.stdout, done.stdout


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


async def wait_len(r: aioredis.Redis, stream: str, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while await r.xlen(stream) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"{stream}: {await r.xlen(stream)} entries after {timeout_s}s, expected {n}")
        await asyncio.sleep(0.2)


async def read_updates(url: str, quiet_s: float, seen: list[tuple[int, ChannelUpdate]]) -> None:
    """Every update appended after now, stamped when seen; returns after ``quiet_s`` without one."""
    r = aioredis.Redis.from_url(url, decode_responses=True)
    last = {f"atp:{{avail}}:{c}": "$" for c in CHANNELS}
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < quiet_s:
        reply: Any = await r.xread(last, count=5000, block=100)  # type: ignore[arg-type]
        now = time.time_ns() // 1_000_000
        for stream, entry_id, fields in stream_entries(reply):
            seen.append((now, from_fields(fields)))
            last[stream] = entry_id
            quiet_since = time.monotonic()
    await r.aclose()


def percentiles(values: list[int]) -> tuple[float, float]:
    if not values:
        return 0.0, 0.0
    arr = np.array(values)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    (tmp / "estate.toml").write_text(estate(args.throttle_ms))
    with EmbeddedRedis(tmp / "redis", appendfsync="everysec") as server:
        rng = random.Random(5)
        t0 = int(time.time() * 1000) - 60_000
        stock = [(f"c{n}", "COUNT", sku, store, rng.randint(1, 12), t0)
                 for n, (sku, store) in enumerate((s, st) for s in SKUS for st in STORES)]
        pipe_facts(server.port, "atp:in:wms", stock)
        port, metrics_port = held_port(), held_port()
        proc = spawn(server.url, port, tmp / "service.log", metrics_port, "--estate", str(tmp / "estate.toml"))
        try:
            async with AtpClient(f"127.0.0.1:{port}") as client:
                await client.wait_ready(timeout_s=300)
            r = aioredis.Redis.from_url(server.url)
            await wait_len(r, "atp:{avail}:pickup", len(stock) + 1, 600)  # each baseline, after the start's marker
            await wait_len(r, "atp:{avail}:web", len(SKUS) + 1, 60)
            await asyncio.sleep(args.throttle_ms / 1000 + 1)
            curation_s0, curated0 = metric(metrics_port, "atp_channel_curation_seconds_sum"), metric(
                metrics_port, "atp_channel_curated_skus_total")
            now = int(time.time() * 1000)
            burst = []
            for n in range(args.facts):
                sku, store = rng.choice(SKUS), rng.choice(STORES)
                kind, qty = ("COUNT", 0) if rng.random() < 0.05 else ("SALE", 1)
                burst.append((f"b{n}", kind, sku, store, qty, now))
            seen: list[tuple[int, ChannelUpdate]] = []
            reader = asyncio.create_task(read_updates(server.url, 3 + args.throttle_ms / 1000, seen))
            await asyncio.sleep(0.3)
            started = time.perf_counter()
            await asyncio.to_thread(pipe_facts, server.port, "atp:in:pos", burst)
            await reader
            elapsed = time.perf_counter() - started
            curation_s = metric(metrics_port, "atp_channel_curation_seconds_sum") - curation_s0
            curated = metric(metrics_port, "atp_channel_curated_skus_total") - curated0
            await r.aclose()
        finally:
            proc.terminate()
            proc.wait(60)
    # published_at is Redis's clock when the entry was written (the value became visible).
    stockouts = [u.published_at - u.durable_at for _, u in seen if u.quantity == 0 and (u.previous or 0) > 0]
    changes = [u.published_at - u.durable_at for _, u in seen if u.quantity > 0 and u.previous is not None]
    reader_lag = [at - u.published_at for at, u in seen]
    s50, s99 = percentiles(stockouts)
    c50, c99 = percentiles(changes)
    return {
        "stockout_p50_ms": round(s50, 1), "stockout_p99_ms": round(s99, 1),
        "change_p50_ms": round(c50, 1), "change_p99_ms": round(c99, 1),
        "coalescing_ratio": round(len(seen) / args.facts, 3),
        "curation_us_per_sku": round(curation_s / max(curated, 1) * 1e6, 1),
        "facts": args.facts, "updates": len(seen), "stockouts": len(stockouts), "changes": len(changes),
        "throttle_ms": args.throttle_ms, "burst_s": round(elapsed, 2),
        "reader_lag_p99_ms": round(percentiles(reader_lag)[1], 1),
        "targets_met": s99 <= 50 and c99 <= args.throttle_ms + 50,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=100_000)
    parser.add_argument("--throttle-ms", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="atp-publish-") as tmp:
        print(json.dumps(asyncio.run(run(args, Path(tmp)))))


if __name__ == "__main__":
    main()
