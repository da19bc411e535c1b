"""Bytes of process memory per remembered reservation and per remembered fact identity (docs/OPERATIONS.md).

    python benchmarks/memory_sizes.py [--reservations 50000] [--identities 65536] [--skus 50000]

One shard's real ``Ledger``, no I/O; each figure is ``tracemalloc``'s growth over the items, after a full collection,
divided by their number (everything the ledger keeps of them, their strings included):

  reservation_held       a Reserve of one line (ids ``res-00000001``, ``order-00000001``, channel ``web``), held
  reservation_resolved   the same once released: remembered for ``ATP_RETENTION_MS`` (R5)
  reservation_refused    a Reserve of one line refused (its SKU sold out), remembered alike
  identity_open_*        a fact identity (E8: a digest and its payload) in the open map, among the newest: with
                         11,000 there (its dict just past a resize) and 16,383 (the most, before a seal)
  identity_sealed        the same once sealed into the columns (``SEAL_AT`` identities a seal, as a shard does)
  sku_with_one_position  a SKU (``sku-00000001``) stocked at one location by a count: its position and the SKU

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from reservation import Fact, FactKind, Ledger, Limits, release, reserve, reserve_command
from reservation._dedupe import SEAL_AT, digest
from reservation._keys import pack_payload

NOW = 1_700_000_000_000
POSITIONS = 1_000


def grown(*steps: Callable[[], None]) -> list[int]:
    """Bytes still allocated after each of ``steps`` in turn (a full collection first), as tracemalloc counts them
    from before the first: one tracing throughout, so that what a step frees of an earlier one's is counted."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    sizes = []
    for step in steps:
        step()
        gc.collect()
        sizes.append(sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename")))
    tracemalloc.stop()
    return sizes


def stocked_ledger(limits: Limits) -> Ledger:
    ledger = Ledger(0, limits)
    for n in range(POSITIONS):
        ledger.record_fact(Fact(f"seed-{n}", "wms", FactKind.RECEIPT, f"sku-{n:08d}", "store-0001", 1_000_000, NOW))
    ledger.commit(NOW)
    return ledger


def reserve_all(ledger: Ledger, limits: Limits, tag: str, n: int, sku: Callable[[int], str]) -> None:
    """``n`` Reserves of one line, ids ``<tag>-00000001``, committed in batches of 500 as the shard commits."""
    for i in range(n):
        reserve(ledger, reserve_command(reservation_id=f"{tag}-{i:08d}", order_ref=f"order-{i:08d}", channel="web",
                                        lines=((sku(i), "store-0001", 1),), ttl_seconds=900, allow_partial=False,
                                        limits=limits), NOW + 1)
        if i % 500 == 499:
            ledger.commit(NOW + 1)
    ledger.commit(NOW + 1)


def reservations(n: int) -> dict[str, float]:
    limits = Limits()
    ledger = stocked_ledger(limits)
    ledger.record_fact(Fact("sold-out", "wms", FactKind.COUNT, "sku-sold-out", "store-0001", 0, NOW))

    def resolve() -> None:
        for i in range(n):
            release(ledger, f"res-{i:08d}", (), "", NOW + 2, limits)
            if i % 500 == 499:
                ledger.commit(NOW + 2)
        ledger.commit(NOW + 2)

    held, resolved = grown(lambda: reserve_all(ledger, limits, "res", n, lambda i: f"sku-{i % POSITIONS:08d}"),
                           resolve)
    (refused,) = grown(lambda: reserve_all(ledger, limits, "refused", n, lambda _i: "sku-sold-out"))
    return {"reservation_held": round(held / n, 1), "reservation_resolved": round(resolved / n, 1),
            "reservation_refused": round(refused / n, 1)}


def identities(n: int) -> dict[str, float]:
    """``n`` identities remembered in rounds of ``SEAL_AT``, each sealed; then ``SEAL_AT - 1`` left open."""
    ledger = Ledger(0, Limits())
    memory = ledger.memory
    rounds = max(n // SEAL_AT, 1)
    facts = iter(range(10**9))

    def remember() -> None:  # each its own digest and payload (its own event time), as facts bring them
        i = next(facts)
        memory.remember(digest("pos", f"till-{i:09d}", f"sku-{i % 10_000:08d}", "store-0001"),
                        pack_payload(NOW - i, int(FactKind.SALE), 1, ""))

    def sealed() -> None:
        for _ in range(rounds):
            for _ in range(SEAL_AT):
                remember()
            memory.forget_old(0, 1)  # between batches: the open map is full, sealed (nothing is past the horizon)

    def open_ones(upto: int) -> Callable[[], None]:
        def more() -> None:
            while len(memory.open) < upto:
                remember()
        return more

    # The open map's dict costs the most per identity just past a resize, the least just before the next.
    past_resize, fullest = 11_000, SEAL_AT - 1
    closed, fewer, most = grown(sealed, open_ones(past_resize), open_ones(fullest))
    return {"identity_sealed": round(closed / (rounds * SEAL_AT), 1),
            "identity_open_past_resize": round((fewer - closed) / past_resize, 1),
            "identity_open_fullest": round((most - closed) / fullest, 1)}


def skus_of_one_position(n: int) -> dict[str, float]:
    """``n`` SKUs, each stocked at one location by a count: what a SKU with one position costs (columns, name, index
    entry and run)."""
    ledger = Ledger(0, Limits())

    def load() -> None:
        for i in range(n):
            ledger.record_fact(Fact(f"count-{i}", "wms", FactKind.COUNT, f"sku-{i:08d}", "store-0001", 5, NOW))
            if i % 500 == 499:
                ledger.commit(NOW)
        ledger.commit(NOW)

    (held,) = grown(load)
    return {"sku_with_one_position": round(held / n, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reservations", type=int, default=50_000)
    parser.add_argument("--identities", type=int, default=4 * SEAL_AT)
    parser.add_argument("--skus", type=int, default=50_000)
    args = parser.parse_args()
    print(json.dumps({"reservations": args.reservations, **reservations(args.reservations),
                      "identities": max(args.identities // SEAL_AT, 1) * SEAL_AT, **identities(args.identities),
                      "skus": args.skus, **skus_of_one_position(args.skus)}))


if __name__ == "__main__":
    main()
