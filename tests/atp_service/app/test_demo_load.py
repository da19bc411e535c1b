"""The demo estate, loaded a block of counts at a time (``load_demo``), holds what ``demo_facts`` counts at every
position it stocks, each count once (E8), whatever the block size."""

from __future__ import annotations

from atp_service import AtpService
from atp_service.app.demo import SKUS, _load_demo_block, demo_blocks, demo_facts, load_demo
from reservation import Limits
from tests.conftest import ServiceFactory

CHECKED = set(SKUS[:3] + SKUS[-2:])
"""The SKUs whose every position is read back: the first block's and the last's (a row put under another SKU or
location of its block's dictionaries shows as a wrong count there)."""


def _demo_counts(service: AtpService, outcome: str) -> float:
    labels = {"origin": "demo", "kind": "COUNT", "outcome": outcome}
    return service.metrics.registry.get_sample_value("atp_facts_total", labels) or 0.0


async def test_the_demo_estate_holds_every_count_of_demo_facts_once(start_service: ServiceFactory) -> None:
    """In blocks of ``max_rows_per_load`` (997 here: a block ends within a SKU's positions, both blocks' dictionaries
    naming that SKU)."""
    service, client = await start_service(limits=Limits(max_rows_per_load=997))
    await load_demo(service)
    counted = {(f.sku, f.location): f.quantity for f in demo_facts(0) if f.sku in CHECKED}
    got = await client.availability(sorted(counted))
    assert {(p.sku, p.location): p.on_hand for p in got} == counted
    stocked = sum(1 for _ in demo_facts(0))
    assert (_demo_counts(service, "applied"), _demo_counts(service, "duplicate")) == (stocked, 0)
    again = await client.availability(sorted(counted))
    assert {(p.sku, p.location): p.on_hand for p in again} == counted


async def test_a_demo_block_loaded_again_counts_each_of_its_counts_once(start_service: ServiceFactory) -> None:
    """A block tried again (Redis away, then back: ``_load_demo_block``) after it was loaded, whole or in part; in
    blocks of the start's own size."""
    service, _ = await start_service()
    now = service.clock.now_ms()
    blocks = list(demo_blocks(now - 60_000, now, service.config.limits))
    stocked = sum(len(block) for block in blocks)
    for block in blocks + blocks:
        await _load_demo_block(service, block)
    assert (_demo_counts(service, "applied"), _demo_counts(service, "duplicate")) == (stocked, stocked)
