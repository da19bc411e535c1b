"""How long Redis keeps other commands waiting while a shard's snapshot is stored.

    python benchmarks/snapshot_write.py [--mb 128] [--part-mb 0,4] [--runs 2]

Starts an embedded Redis (AOF everysec, as ``atp-service serve`` runs it), claims a keyspace, then
for each part size (0: the whole snapshot in one call) stores a snapshot of ``--mb`` MB of random
bytes through ``LogStore.write_snapshot`` while a probe on its own connection sends a one-entry
``XADD`` every millisecond, as a shard's append would. One JSON line per run: the write's seconds
and the probe's p50 / p99 / longest wait (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atp_service import EmbeddedRedis
from atp_service.storage.log import LogStore, connect


async def _probe(url: str, stop: asyncio.Event, waits: list[float]) -> None:
    client = connect(url, 60.0)
    try:
        while not stop.is_set():
            began = time.perf_counter()
            await client.xadd("probe", {"e": "1"}, maxlen=1000)
            waits.append((time.perf_counter() - began) * 1000)
            await asyncio.sleep(0.001)
    finally:
        await client.aclose()


async def _one(url: str, store: LogStore, data: bytes, part_bytes: int) -> dict[str, Any]:
    waits: list[float] = []
    stop = asyncio.Event()
    probe = asyncio.ensure_future(_probe(url, stop, waits))
    await asyncio.sleep(0.2)  # the probe's connection made and warm
    began = time.perf_counter()
    await store.write_snapshot(0, 1, data, extra_s=60.0, part_bytes=part_bytes)
    took = time.perf_counter() - began
    await asyncio.sleep(0.2)
    stop.set()
    await probe
    return {"mb": len(data) >> 20, "part_mb": part_bytes / (1 << 20), "write_s": round(took, 2),
            "probe_p50_ms": round(float(np.percentile(waits, 50)), 2),
            "probe_p99_ms": round(float(np.percentile(waits, 99)), 1), "probe_max_ms": round(max(waits), 1)}


async def _run(args: argparse.Namespace, tmp: Path) -> None:
    with EmbeddedRedis(tmp / "redis", appendfsync="everysec") as server:
        client = connect(server.url, 60.0)
        try:
            store = LogStore(client, "bench:", pipeline_max=64)
            await store.claim(1)
            await store.submit(0, 1, b"e")
            data = os.urandom(args.mb << 20)
            for _ in range(args.runs):
                for text in args.part_mb.split(","):
                    part = int(float(text) * (1 << 20))
                    print(json.dumps(await _one(server.url, store, data, part)), flush=True)
        finally:
            await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=128, help="the snapshot's size")
    parser.add_argument("--part-mb", default="0,4", help="part sizes to compare (0: one call)")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="atp-snapshot-write-") as tmp:
        asyncio.run(_run(args, Path(tmp)))


if __name__ == "__main__":
    main()
