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

import numpy as np

from reservation import CountRows, Fact, FactKind, Limits, Unavailable, count_rows

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


BLOCK_ROWS = 20_000
"""Counts of one block (``FactDesk.load_counts``, as a ``LoadCounts`` call loads them; at most
``max_rows_per_load``): one actor message a shard."""


def demo_blocks(event_time: int, now: int, limits: Limits) -> Iterator[CountRows]:
    """``demo_facts`` as blocks of counts, checked as a ``LoadCounts`` call's rows are: the same stock, loaded
    through the shards' column path instead of one fact at a time (seconds of a start, ~100,000 facts)."""
    facts = demo_facts(event_time)
    while chunk := list(islice(facts, min(BLOCK_ROWS, limits.max_rows_per_load))):
        skus = list(dict.fromkeys(fact.sku for fact in chunk))
        locations = list(dict.fromkeys(fact.location for fact in chunk))
        sku_at, location_at = {sku: i for i, sku in enumerate(skus)}, {loc: i for i, loc in enumerate(locations)}
        columns = (np.array([sku_at[f.sku] for f in chunk], dtype="<u4").tobytes(),
                   np.array([location_at[f.location] for f in chunk], dtype="<u4").tobytes(),
                   np.array([f.quantity for f in chunk], dtype="<i8").tobytes(),
                   np.array([f.event_time for f in chunk], dtype="<i8").tobytes())
        block, errors = count_rows(SOURCE, skus, locations, columns, now, limits)
        if errors:  # the demo's own stock refused by the service's limits: said, not loaded in part
            raise next(iter(errors.values()))
        yield block


async def load_demo(service: AtpService) -> None:
    """Record the demo estate through the service's fact desk, a block of counts at a time."""
    assert service.desk is not None
    now = service.clock.now_ms()
    total = 0
    for block in demo_blocks(now - 60_000, now, service.config.limits):
        await _load_demo_block(service, block)
        total += len(block)
    log.info("demo estate loaded: %d stocked positions", total)


async def _load_demo_block(service: AtpService, block: CountRows) -> None:
    """Load one block, again while Redis is away: a count loaded twice counts once (E8: its row is the COUNT
    fact ``(source, "count@<as_of>")`` of its position). Not again once a shard failed or the keyspace was taken."""
    assert service.desk is not None
    for attempt in range(1, DEMO_TRIES + 1):
        try:
            await service.desk.load_counts(block, origin="demo")
            return
        except Unavailable as exc:
            if attempt == DEMO_TRIES or service.failed.is_set() or service.replaced.is_set():
                raise
            log.warning("demo estate: %s; trying again in 1 s", exc)
        await asyncio.sleep(1.0)
