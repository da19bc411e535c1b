"""``--redis-full`` (``full.py``): Redis at its ``maxmemory`` refusing appends, channel writes and id claims
OOM, in spans of a step's rounds and one write at a time, with every other fault of the simulation."""

from __future__ import annotations

import os

from tests.sim.driver import Driver
from tests.sim.tally import Tally

REDIS_FULL_SEEDS = int(os.environ.get("ATP_SIM_REDIS_FULL_SEEDS", "8"))
"""Seeds with Redis refusing writes for memory, with one process and with three: about 5 s of CPU each."""


async def test_writes_a_full_redis_refused_are_taken_as_certain_and_the_service_goes_on() -> None:
    """The service takes a refusal for memory as certain (nothing in doubt, nothing settled): every
    invariant holds — memory equals a replay of the log (E10), nothing sold twice (R2), channels follow
    durable state (C4), no route without a record, every shard answering once Redis has room."""
    tally = Tally()
    for seed in range(REDIS_FULL_SEEDS):
        await Driver(seed, tally, redis_full=True).run(60)
        await Driver(seed, tally, processes=3, redis_full=True).run(60)
    assert tally.oom_refused > REDIS_FULL_SEEDS and tally.cancelled_pending and tally.kills, tally


async def test_a_reserve_given_up_then_refused_for_memory_leaves_no_route() -> None:
    """``--seed 14 --redis-full``: r205's caller gave up at tick 1, its record in memory, so its route was
    kept; its append then reached Redis full and was refused OOM. Certain, it was never in doubt, and only a
    settle finding an entry absent told the routes to forget it: a route to no record, for good."""
    await Driver(14, redis_full=True).run(60)


async def test_a_key_withdrawn_after_redis_lost_the_only_position_behind_it_is_no_c4_violation() -> None:
    """``--seed 205 --lose-tail --redis-full``: Redis came back from the save of step 22; before noticing,
    the instance published B@L1 = 8 from memory (a position Redis had lost, never durable in what it holds)
    into the restored stream. Restarted, the desk shows such a key 0 (``_withdraw_uncurated``), as it must
    (C4); the checker took that 0 for a value no durable position stood behind."""
    await Driver(205, lose_tail=True, redis_full=True).run(26)
