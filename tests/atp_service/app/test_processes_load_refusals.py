"""A ``LoadCounts`` whose block spans groups of two service processes (``ownership = leases``) on one
Redis, where a part is refused: the caller is told the truth about what loaded. A refusal the
process that took the call can give for its own part comes before any row of another process is
sent (nothing loaded anywhere); a refusal of one part after others loaded says so, in words and in
``ErrorInfo`` metadata (``rows_loaded``, ``rows_applied``, ``rows_not_loaded``), and resending the
whole block loads the rest (E8: the rows loaded before are duplicates)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis

from reservation import Limits
from tests.atp_service.app.test_processes import SHARDS, Process, group_of, owned, processes
from tests.atp_service.app.test_processes_split import counts_block
from tests.atp_service.refusals import refused
from tests.conftest import ServiceFactory, services_on
from tests.waiting import until

BOUND = 3
"""Each shard's ``max_positions_per_shard``."""


@pytest.fixture
async def start_bounded(redis_url: str) -> AsyncIterator[ServiceFactory]:
    # 5 s leases, balancing every 200 ms: no test here waits for one to lapse (see test_processes' start_process).
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=(), limits=Limits(max_positions_per_shard=BOUND)) as start:
        yield start


def sku_of(others: set[int], taken: set[str]) -> str:
    """A SKU not in ``taken`` whose group is one of ``others``."""
    return next(s for i in range(10_000) if group_of(s := f"k{i}") in others and s not in taken)


async def full_and_roomy(running: list[Process]) -> tuple[str, str]:
    """A SKU new to a group of the first process that is at the bound, and one new to a group of the
    second with room."""
    (first, client), (second, _) = running
    full_group = min(owned(first))
    filler: list[str] = []
    for _ in range(BOUND):
        filler.append(sku_of({full_group}, set(filler)))
    answer = await client.load_counts(counts_block(filler, [1] * BOUND, first.clock.now_ms() - 1000))
    assert answer.applied == BOUND
    new_full = sku_of({full_group}, set(filler))
    return new_full, sku_of(owned(second), set())


async def on_hand(running: list[Process], sku: str) -> int:
    (position,) = await running[0][1].availability([(sku, "DC")])
    return position.on_hand


FACTS = ("rows_loaded", "rows_applied", "rows_not_loaded")


async def test_a_load_with_rows_past_the_bound_at_the_process_taking_it_loads_nothing_anywhere(
        start_bounded: ServiceFactory) -> None:
    """Defect: the block went to both processes at once; the one that took it refused its own part
    CAPACITY_REACHED "...; nothing applied" while the other process loaded its rows."""
    running = await processes(start_bounded, 2)
    new_full, new_roomy = await full_and_roomy(running)
    service, client = running[0]
    refusal = await refused(client.load_counts(counts_block([new_roomy, new_full], [5, 6], service.clock.now_ms())))
    assert (refusal.reason, refusal.metadata.get("limit")) == ("CAPACITY_REACHED", "max_positions_per_shard")
    assert not set(FACTS) & set(refusal.metadata) and "nothing applied" in refusal.message, refusal
    assert (await on_hand(running, new_roomy), await on_hand(running, new_full)) == (0, 0)


async def test_a_load_refused_by_the_other_process_for_its_part_says_what_was_loaded(
        start_bounded: ServiceFactory) -> None:
    """Defect: the other process's refusal of its part (at the bound) came back as it was — "...;
    nothing applied" — while this process had loaded its own rows: an operator told nothing loaded
    had half a block in the ATP. Now the refusal says how many rows were loaded, and a resend of the
    whole block finds them loaded already (E8)."""
    running = await processes(start_bounded, 2)
    new_full, new_roomy = await full_and_roomy(running)
    service, client = running[1]
    block = counts_block([new_roomy, new_full], [5, 6], service.clock.now_ms())
    refusal = await refused(client.load_counts(block))
    assert (refusal.reason, refusal.metadata.get("limit")) == ("CAPACITY_REACHED", "max_positions_per_shard")
    assert {k: refusal.metadata.get(k) for k in FACTS} == {"rows_loaded": "1", "rows_applied": "1",
                                                           "rows_not_loaded": "1"}, refusal
    assert "nothing applied" not in refusal.message, refusal.message
    assert "1 of the block's 2 valid rows were loaded" in refusal.message, refusal.message
    assert (await on_hand(running, new_roomy), await on_hand(running, new_full)) == (5, 0)
    again = await refused(client.load_counts(block))  # the same block resent: nothing loaded twice
    assert {k: again.metadata.get(k) for k in FACTS} == {"rows_loaded": "1", "rows_applied": "0",
                                                         "rows_not_loaded": "1"}, again


async def test_a_load_whose_other_process_is_unreachable_says_what_was_loaded(
        start_bounded: ServiceFactory) -> None:
    """The other process's part not sent (its gRPC server gone, its groups still its own): the
    caller is told UNAVAILABLE as gRPC said it — and, with it, that this process's rows loaded."""
    running = await processes(start_bounded, 2)
    (service, client), (other, _) = running
    here = sku_of(owned(service), set())
    there = sku_of(owned(other), set())
    assert other._server is not None
    await other._server.stop(None)
    refusal = await refused(client.load_counts(counts_block([there, here], [5, 6], service.clock.now_ms())))
    assert refusal.code.name == "UNAVAILABLE"
    assert {k: refusal.metadata.get(k) for k in ("rows_loaded", "rows_not_loaded")} == \
        {"rows_loaded": "1", "rows_not_loaded": "1"}, refusal
    assert "1 of the block's 2 valid rows were loaded" in refusal.message, refusal.message
    (position,) = await client.availability([(here, "DC")])
    assert position.on_hand == 6


@pytest.fixture
async def start_patient(redis_url: str) -> AsyncIterator[ServiceFactory]:
    """Processes whose leases and Redis replies outlast a short pause of Redis writes."""
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, redis_timeout_s=4,
                           shards=SHARDS, input_streams=()) as start:
        yield start


async def test_a_load_whose_other_process_is_lost_with_its_part_in_hand_says_what_was_loaded(
        start_patient: ServiceFactory, redis_url: str) -> None:
    """Defect: the other process lost with its part in hand (gRPC's UNAVAILABLE, no details: the part
    is in doubt, R7) failed the whole call "UNKNOWN: Unexpected AttributeError" - not retryable,
    nothing said of the rows this process loaded. Now it is OUTCOME_UNKNOWN saying what was loaded."""
    running = await processes(start_patient, 2)
    (service, client), (other, _) = running
    here, there = sku_of(owned(service), set()), sku_of(owned(other), set())
    engine = other.engine
    assert engine is not None and other._server is not None
    pause = redis.Redis.from_url(redis_url)
    pause.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")  # each part's append waits in Redis
    try:
        call = asyncio.ensure_future(client.load_counts(counts_block([there, here], [5, 6], service.clock.now_ms())))
        await until(lambda: bool(engine.actors[group_of(there)]._inflight), "the other part in hand there")
        await other._server.stop(None)  # the other process's answer is lost with the part in hand
    finally:
        pause.execute_command("CLIENT", "UNPAUSE")
        pause.close()
    refusal = await refused(call)
    assert (refusal.code.name, refusal.reason) == ("UNAVAILABLE", "OUTCOME_UNKNOWN"), refusal
    assert {k: refusal.metadata.get(k) for k in FACTS} == {"rows_loaded": "1", "rows_applied": "1",
                                                           "rows_not_loaded": "1"}, refusal
    assert await on_hand(running, here) == 6
