"""ShardActor over the simulation's in-process log (tests/sim/simlog.py): appends stay in flight
until the test answers them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from atp_service.clock import ManualClock
from atp_service.shard import ShardActor
from reservation import reserve

from ..reservation.helpers import cmd, ledger_with
from ..sim.simlog import SimLog
from ..sim.world import sim_config


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(what)


async def test_a_maintenance_pass_with_nothing_due_does_not_hold_new_work_behind_appends_in_flight() -> None:
    """Every shard is asked to maintain itself at once every pass; draining its pipeline each time
    was a stall of every shard every 100 ms, at any load."""
    log = SimLog()
    actor = ShardActor(0, ledger_with({("A", "S1"): 10}), log, ManualClock(), sim_config(), 0)  # type: ignore[arg-type]
    actor.start()
    try:
        first = actor.submit(lambda ledger, now: reserve(ledger, cmd("r1", ("A", "S1", 1)), now))
        await _until(lambda: len(log.pending) == 1, "the first batch is appended")
        actor.request_maintenance()  # nothing due: no snapshot, no fact old enough to forget
        second = actor.submit(lambda ledger, now: reserve(ledger, cmd("r2", ("A", "S1", 1)), now))
        await _until(lambda: len(log.pending) == 2, "the second batch is decided while the first is in flight")
        log.pump("ok")
        assert [rec.reservation_id for rec, _ in await asyncio.gather(first, second)] == ["r1", "r2"]
    finally:
        await actor.stop()
