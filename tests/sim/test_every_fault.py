"""Every fault the simulator names, at once, over three processes: the flag pairs no other test runs together
(``--clock-skew`` with ``--redis-full``, ``--shed``, ``--fact-times`` or ``--short-grace``; ``--fact-times`` or
``--short-grace`` with the processes' own faults; ``--suspends`` with ``--shed`` or ``--redis-full``). One run stands
for a campaign of about 200 seeds of each, every invariant held (``python -m tests.sim --processes 3 …``): the two
sets here, the one with ``--fact-times`` and the one with ``--short-grace --lose-tail`` (``--fact-times`` turns its
late facts off under ``--lose-tail``; ``--clock-jumps`` refuses both)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.sim.driver import Driver
from tests.sim.tally import Tally

EVERY_FAULT_SEEDS = int(os.environ.get("ATP_SIM_EVERY_FAULT_SEEDS", "3"))
"""Seeds of each set: about 2 s of CPU each."""

_ALWAYS: dict[str, Any] = dict(late_across_steps=True, retry_other_content=True, clock_skew=True, redis_full=True,
                               shed=True, settle_faults=True, groups=True, forward_streams=True, partition=True,
                               suspends=True)


@pytest.mark.parametrize("also", [dict(fact_times=True), dict(short_grace=True, lose_tail=True)],
                         ids=["fact-times", "short-grace-lose-tail"])
async def test_every_invariant_holds_under_every_fault_at_once(also: dict[str, Any]) -> None:
    tally = Tally()
    for seed in range(EVERY_FAULT_SEEDS):
        await Driver(seed, tally, processes=3, **_ALWAYS, **also).run(60)
    # the faults happened, not the happy path alone
    assert tally.kills and tally.process_pauses and tally.partitions and tally.host_suspends, tally.summary()
    assert tally.oom_refused and tally.shed_refused and tally.fence_faults and tally.stream_parts, tally.summary()
    assert tally.cancelled_pending and tally.late_landed and tally.group_lines and tally.clock_steps_back, \
        tally.summary()
    if also.get("fact_times"):
        assert tally.fact_past and tally.fact_late, tally.summary()
    else:
        assert tally.tail_losses and tally.forgets and tally.seals, tally.summary()
