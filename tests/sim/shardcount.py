"""E1/E8: a fact's answer and a position's on_hand never depend on how positions are spread over shards.

At the end of a seed, every fact batch the seed sent (duplicates, conflicts, till receipts sharing
an id across SKUs, ties between sources, SHIPMENTs naming reservations) is sent again, in the same
order and without faults, to a fresh service with one shard and to one with three; each fact must
get the same outcome, the same positions the same on_hand, the quarantine stream the same entries.
"""

from __future__ import annotations

import asyncio
from typing import Any

from reservation import DomainError, Fact
from reservation._limits import MAX_DURATION_MS_CEILING
from tests.sim.checks import Violation
from tests.sim.world import World

ROUNDS = 200


async def _record_all(shards: int, batches: list[list[Fact]],
                      grace_ms: int) -> tuple[list[Any], dict[Any, int], list[Any]]:
    world = World(shards, channels=False, grace_ms=grace_ms)
    await world.boot()
    answers: list[Any] = []
    for batch in batches:
        task = asyncio.ensure_future(world.fact_desk.record(batch, "sim"))
        for _ in range(ROUNDS):
            for _ in range(4):
                await asyncio.sleep(0)
            if task.done() and not world.busy():
                break
            world.log.pump("ok")
        else:
            raise AssertionError(f"facts never answered with {shards} shard(s)")
        answers += [r.message if isinstance(r, DomainError) else (r[0].name, _layout_free(r[1])) for r in task.result()]
    on_hand = {(sku, loc): q.on_hand for a in world.eng.actors for sku, loc, q in a.ledger.store.items()}
    quarantined = sorted((f["source"], f["event_id"], f["sku"], f["location"], _layout_free(f["reason"]))
                         for _, f in world.log.client.entries)
    await world.eng.stop(snapshot=False)  # no shard task may outlive its loop
    return answers, on_hand, quarantined


def _layout_free(reason: str) -> str:
    """A quarantine reason without what depends on the layout: a late fact's names the horizon, its shard's
    stream time minus grace (E6: each shard keeps its own; ``--fact-times``), late on one shard and on three."""
    return reason.split(" (", 1)[0] if reason.startswith("late:") else reason


async def facts_answer_alike(batches: list[list[Fact]], grace_ms: int = MAX_DURATION_MS_CEILING) -> None:
    """``grace_ms``: the run's E6 window (``--fact-times``: late facts quarantined alike on one shard and three)."""
    one, many = await _record_all(1, batches, grace_ms), await _record_all(3, batches, grace_ms)
    facts = [f for batch in batches for f in batch]
    for fact, a, b in zip(facts, one[0], many[0], strict=True):
        if a != b:
            raise Violation(f"E1/E8: fact {fact} answered {a} on one shard, {b} on three")
    if one[1] != many[1]:
        diff = {k: (one[1].get(k), many[1].get(k)) for k in set(one[1]) | set(many[1])
                if one[1].get(k) != many[1].get(k)}
        raise Violation(f"E1/E8: on_hand (one shard, three shards) differs: {diff}")
    if one[2] != many[2]:
        raise Violation(f"E8: quarantined facts differ: one shard {one[2]}, three {many[2]}")
