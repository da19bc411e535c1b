"""The demo estate loaded on a first start: 300 stores + 2 distribution centres, 1,000 SKUs.

Stock is generated from a fixed seed so every newcomer sees the same numbers:
DCs hold hundreds to thousands of units of every SKU; each store stocks about a
third of the range with a handful of units (a long tail, like real stores).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING

from reservation import Fact, FactKind, Unavailable

if TYPE_CHECKING:
    from atp_service.app.service import AtpService

log = logging.getLogger("atp_service")

DEMO_TRIES = 30
"""Tries of one chunk of the demo estate while Redis is away (its embedded Redis restarting), 1 s apart."""

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


async def load_demo(service: AtpService) -> None:
    """Record the demo estate through the service's fact desk, in chunks."""
    assert service.desk is not None
    facts = demo_facts(service.clock.now_ms() - 60_000)
    total = 0
    while chunk := list(islice(facts, 5000)):
        await _record_demo_chunk(service, chunk)
        total += len(chunk)
    log.info("demo estate loaded: %d stocked positions", total)


async def _record_demo_chunk(service: AtpService, chunk: list[Fact]) -> None:
    """Record one chunk, again while Redis is away: the demo's facts keep their ids, so a fact
    recorded twice counts once (E8). Not again once a shard failed or the keyspace was taken."""
    assert service.desk is not None
    for attempt in range(1, DEMO_TRIES + 1):
        failures = [r for r in await service.desk.record(chunk, origin="demo") if isinstance(r, Exception)]
        if not failures:
            return
        over = attempt == DEMO_TRIES or service.failed.is_set() or service.replaced.is_set()
        if over or not all(isinstance(f, Unavailable) for f in failures):
            raise failures[0]
        log.warning("demo estate: %s; trying again in 1 s", failures[0])
        await asyncio.sleep(1.0)
