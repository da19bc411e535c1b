"""The demo estate loaded on a first start: 300 stores + 2 distribution centres, 1,000 SKUs.

Stock is generated from a fixed seed so every newcomer sees the same numbers:
DCs hold hundreds to thousands of units of every SKU; each store stocks about a
third of the range with a handful of units (a long tail, like real stores).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from reservation import Fact, FactKind

STORES = [f"store-{i:03d}" for i in range(1, 301)]
DCS = ["dc-east", "dc-west"]
SKUS = [f"sku-{i:05d}" for i in range(1, 1001)]
SOURCE = "demo-seed"


def demo_facts(event_time: int, seed: int = 7) -> Iterator[Fact]:
    """COUNT facts that set the demo stock, one per stocked position."""
    rng = random.Random(seed)
    n = 0
    for sku in SKUS:
        popularity = rng.paretovariate(1.5)
        for dc in DCS:
            n += 1
            qty = min(50_000, int(200 * popularity) + rng.randint(0, 300))
            yield Fact(f"seed-{n}", SOURCE, FactKind.COUNT, sku, dc, qty, event_time)
        for store in STORES:
            if rng.random() < 0.33:
                n += 1
                qty = rng.choice((0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 20))
                yield Fact(f"seed-{n}", SOURCE, FactKind.COUNT, sku, store, qty, event_time)
