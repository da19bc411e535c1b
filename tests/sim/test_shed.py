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


async def test_a_shard_that_found_its_log_short_as_the_process_was_killed_was_that_instances_finding() -> None:
    """``--seed 1001 --lose-tail --shed``: Redis came back from a save of step 49 at step 54's start, losing
    shard 2's entries 47..50 (acknowledged); the shard's next append was refused GAP, its settle read the log
    ending at 46 and the shard stopped (``LogDiverged``: R7, as documented), its task ending in the very turn
    the process was killed. With every task ended, the kill had none to cancel and awaited nothing: the
    dead instance's failure report (a done callback) ran only once the restart had begun, and its ERROR was
    judged as the new instance's, which had lost nothing since its start. The dead instance's due callbacks
    now run before the restart, as they do whenever a task was left to cancel."""
    await Driver(1001, lose_tail=True, shed=True).run(55)


async def test_a_call_refused_for_load_may_meet_an_expiry_due_by_its_group_s_clock_ahead_of_the_world_s() -> None:
    """``--seed 93 --lose-tail --redis-full --shed --settle-faults --clock-jumps --groups``: the host's wall clock set
    hours ahead, the service's clock follows it (R6) and r166's hold, due by it, expired in step 40 while a Confirm of
    r166 was refused for load. The check judged the hold's expiry by the world's clock, not due, and took the
    expiry for the refused call's change. It judges it by the group's clock now, at least its newest stamp
    (``shed.group_time``; an expiry before its TTL by those stamps is ``stamps.py``'s to find)."""
    await Driver(93, lose_tail=True, redis_full=True, shed=True, settle_faults=True, clock_jumps=True,
                 groups=True).run(41)
