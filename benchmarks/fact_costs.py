"""Per-fact costs inside one shard's Ledger, no I/O: memory held for dedupe/history, and CPU time.

    python benchmarks/fact_costs.py [--facts 100000]

Prints one JSON object: bytes_per_fact (tracemalloc growth while facts are made and recorded one by
one and then dropped by the caller, as the service does: everything the ledger keeps of them, their
strings included), us_per_fact with the service's GC thresholds and with CPython's defaults. As in
a shard, the batch's events are committed every 500 facts and maintenance (E8 sealing and
forgetting, E9 sweeps) runs between batches every 10,000.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
import tracemalloc
from collections.abc import Iterator

from atp_service.config import ServiceConfig
from reservation import Fact, FactKind, Ledger, Limits, encode_entry

NOW = 1_700_000_000_000
MAINTAIN_EVERY = 10_000


def make_facts(n: int) -> list[Fact]:
    return list(fact_stream(n))


def fact_stream(n: int) -> Iterator[Fact]:
    rng = random.Random(1)
    kinds = [FactKind.SALE, FactKind.RETURN, FactKind.RECEIPT, FactKind.ADJUST, FactKind.COUNT]
    for i in range(n):
        yield Fact(f"till-{i:09d}", f"pos-store-{i % 300:03d}", rng.choice(kinds), f"sku-{rng.randrange(10_000):05d}",
                   f"loc-{rng.randrange(10):02d}", rng.randint(1, 3), NOW - rng.randrange(3_600_000))


def record_all(facts: list[Fact]) -> float:
    ledger = Ledger(0, Limits())
    started = time.perf_counter()
    for i in range(0, len(facts), 500):
        for fact in facts[i:i + 500]:
            ledger.record_fact(fact)
        encode_entry(ledger.commit(NOW))
        if i % MAINTAIN_EVERY == 0:
            ledger.forget_old_facts()
            ledger.compact_some()
    return (time.perf_counter() - started) / len(facts) * 1e6


def bytes_per_fact(n: int) -> float:
    ledger = Ledger(0, Limits())
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i, fact in enumerate(fact_stream(n), 1):
        ledger.record_fact(fact)
        if i % 500 == 0:
            ledger.commit(NOW)  # as the shard does per batch: the batch's events go to the log
        if i % MAINTAIN_EVERY == 0:
            ledger.forget_old_facts()
            ledger.compact_some()
    ledger.commit(NOW)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return sum(s.size_diff for s in after.compare_to(before, "filename")) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=100_000)
    args = parser.parse_args()
    memory = bytes_per_fact(args.facts)
    facts = make_facts(args.facts)
    default = gc.get_threshold()
    slow = record_all(facts)
    gc.set_threshold(*ServiceConfig().gc_thresholds)
    fast = record_all(facts)
    gc.set_threshold(*default)
    print(json.dumps({"facts": args.facts, "bytes_per_fact": round(memory),
                      "us_per_fact_service_gc": round(fast, 2), "us_per_fact_default_gc": round(slow, 2)}))


if __name__ == "__main__":
    main()
