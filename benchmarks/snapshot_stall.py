"""How long one shard stops while its snapshot is built: ``Ledger.snapshot()`` and its msgpack
encoding run inside the shard's turn, on the event loop every shard and call shares.

One shard's ledger is filled as a shard of a national estate would be — a count per position
(``--skus`` x ``--locations``), then ``--facts`` sales stamped over the day after it, with E8's
open map sealed between batches as a shard's maintenance does — and its snapshot is built
``--rounds`` times. No I/O. Prints one JSON line: positions, remembered facts,
snapshot_ms and encode_ms (each round), stall_ms (their sum: what the shard's turn takes),
snapshot_mb, and compact_ms: one maintenance pass of E9 compaction (``COMPACT_PER_PASS`` positions).

    python benchmarks/snapshot_stall.py [--skus 312 --locations 300 --facts 62000]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atp_service.storage.log import SnapshotRecord
from reservation import FactKind, Ledger, Limits
from reservation import fact as make_fact

DAY_MS = 24 * 3600 * 1000
BATCH = 500


def filled(skus: int, locations: int, facts: int) -> Ledger:
    ledger, limits = Ledger(0, Limits()), Limits()
    now = int(time.time() * 1000)
    start = now - DAY_MS + 60_000
    n = 0
    for s in range(skus):
        for loc in range(locations):
            ledger.record_fact(make_fact(f"count@{start}", "erp", int(FactKind.COUNT), f"sku-{s:07d}",
                                         f"loc-{loc:04d}", 50, start, "", now, limits))
            n += 1
            if n % BATCH == 0:
                ledger.commit(now)
    rng = random.Random(1)
    for i in range(facts):
        ledger.record_fact(make_fact(f"sale-{i}", "pos", int(FactKind.SALE), f"sku-{rng.randrange(skus):07d}",
                                     f"loc-{rng.randrange(locations):04d}", 1, rng.randint(start + 1, now - 1), "",
                                     now, limits))
        if i % BATCH == 0:
            ledger.commit(now)
            ledger.forget_old_facts()  # as a shard's maintenance does between batches: seals E8's open map
    ledger.commit(now)
    ledger.forget_old_facts()
    return ledger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skus", type=int, default=312, help="SKUs of the shard (100,000 over 16 shards: 6,250)")
    parser.add_argument("--locations", type=int, default=300)
    parser.add_argument("--facts", type=int, default=62_000, help="day facts after the counts")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ledger = filled(args.skus, args.locations, args.facts)
    started = time.perf_counter()
    ledger.compact_some()
    compact_ms = round((time.perf_counter() - started) * 1000, 1)
    snapshot_ms, encode_ms, size = [], [], 0
    for _ in range(args.rounds):
        started = time.perf_counter()
        snap = ledger.snapshot()
        built = time.perf_counter()
        size = len(msgspec.msgpack.encode(SnapshotRecord(1, snap)))
        snapshot_ms.append(round((built - started) * 1000))
        encode_ms.append(round((time.perf_counter() - built) * 1000))
    print(json.dumps({"positions": args.skus * args.locations, "facts": args.facts, "snapshot_ms": snapshot_ms,
                      "encode_ms": encode_ms, "stall_ms": [a + b for a, b in zip(snapshot_ms, encode_ms, strict=True)],
                      "snapshot_mb": round(size / 2**20, 1), "compact_ms": compact_ms}))


if __name__ == "__main__":
    main()
