"""The demo estate, loaded a block of counts at a time (``load_demo``), holds what ``demo_facts`` counts at every
position it stocks, each count once (E8), whatever the block size."""

from __future__ import annotations

from atp_client import AtpClient
from atp_service import AtpService
from atp_service.app.demo import _load_demo_block, demo_blocks, demo_facts, load_demo
from reservation import Limits
from tests.conftest import ServiceFactory

READ_AT_ONCE = 1000
"""Positions of one GetAvailability call (``max_availability_keys``' default)."""


def _demo_counts(service: AtpService, outcome: str) -> float:
    labels = {"origin": "demo", "kind": "COUNT", "outcome": outcome}
    return service.metrics.registry.get_sample_value("atp_facts_total", labels) or 0.0


async def _on_hand(client: AtpClient, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for i in range(0, len(keys), READ_AT_ONCE):
        out.update(((p.sku, p.location), p.on_hand) for p in await client.availability(keys[i:i + READ_AT_ONCE]))
    return out


async def test_the_demo_estate_holds_every_count_of_demo_facts_once(start_service: ServiceFactory) -> None:
    """In blocks of ``max_rows_per_load`` (997 here: a block ends within a SKU's positions, both blocks' dictionaries
    naming that SKU). Every position of the estate is read back, as the fact-at-a-time load set it (a COUNT's
    quantity): a row put under another SKU or location of its block's dictionaries shows as a wrong count at its
    own position, and as a position made that ``demo_facts`` does not stock (the shards hold no more than it)."""
    service, client = await start_service(limits=Limits(max_rows_per_load=997))
    assert service.engine is not None
    await load_demo(service)
    counted = {(f.sku, f.location): f.quantity for f in demo_facts(0)}
    assert await _on_hand(client, sorted(counted)) == counted
    assert sum(len(actor.positions()) for actor in service.engine.actors) == len(counted)
    assert (_demo_counts(service, "applied"), _demo_counts(service, "duplicate")) == (len(counted), 0)


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
