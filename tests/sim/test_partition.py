"""``--partition`` (``partition.py``): two service processes cut off from each other over gRPC, both still
reaching Redis, for ticks or several steps, with every other fault of a multi-process seed."""

from __future__ import annotations

import os

from tests.sim.driver import Driver
from tests.sim.tally import Tally

PARTITION_SEEDS = int(os.environ.get("ATP_SIM_PARTITION_SEEDS", "2"))
"""Seeds with two processes and with three cut off from each other now and then: about 1 s of CPU each."""


async def test_processes_cut_off_from_each_other_lose_no_reservation_and_oversell_nothing() -> None:
    """Order steps, forwarded calls and located asks across a cut are never sent, made with their answers lost,
    or served once it heals, while TTLs pass and housekeeping's retries fail too: every invariant holds —
    nothing acknowledged lost (R7), nothing sold twice nor held past its order's decision once the processes
    reach each other again (R2, R3), memory equal to a replay of the log (E10), every group answering."""
    tally = Tally()
    for seed in range(PARTITION_SEEDS):
        await Driver(seed, tally, processes=2, partition=True).run(60)
        await Driver(seed, tally, processes=3, partition=True).run(60)
    # Not vacuous: partitions were drawn, and they cut calls. How many calls a cut meets depends on how many the
    # processes send each other, which the product decides (a SHIPMENT asking one process, not every other: fewer).
    assert tally.partitions > PARTITION_SEEDS and tally.partition_cuts > tally.partitions // 2, tally
