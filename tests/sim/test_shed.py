"""``--shed`` (``shed.py``): shards refusing work for load (a full mailbox, queued work past
``max_queue_delay_ms``, a backlog behind every send) and, with several processes, a process refusing
calls at its door, with every other fault of the simulation."""

from __future__ import annotations

import os

from tests.sim.driver import Driver
from tests.sim.tally import Tally

SHED_SEEDS = int(os.environ.get("ATP_SIM_SHED_SEEDS", "4"))
"""Seeds with load shed, with one process and with three: about 2 s of CPU each."""


async def test_a_call_refused_for_load_changed_nothing_and_its_retry_decides_as_a_first_attempt() -> None:
    """RESOURCE_EXHAUSTED for load (SHARD_OVERLOADED, SERVICE_OVERLOADED) means nothing was applied:
    each refused call's reservations are found as they were when it was sent — no record, no part of an
    order, no state changed — and the same id sent again decides normally (R5): every invariant holds,
    nothing sold twice (R2), no route without a record, every shard answering once the load is gone."""
    tally = Tally()
    for seed in range(SHED_SEEDS):
        await Driver(seed, tally, shed=True).run(60)
        await Driver(seed, tally, processes=3, shed=True).run(60)
    assert tally.shed_calls > SHED_SEEDS and tally.shed_refused > tally.shed_calls and tally.kills, tally


async def test_a_located_call_is_answered_by_the_holder_whatever_a_peer_refused_for_load() -> None:
    """``--seed 42 --processes 3 --shed``: a Release of r24 reached a process not holding it, which asked
    every other owner (``Forwarder._locate``); the holder released it, while another refused the ask at its
    door for load. The holder's answer is the caller's, as the service answers it: the refusal, told
    instead, said nothing was done of a release that was."""
    await Driver(42, processes=3, shed=True).run(10)
