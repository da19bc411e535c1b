"""Helpers of the engine tests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from atp_service.engine.clock import ManualClock
from atp_service.engine.router import Engine
from atp_service.engine.shard import ShardActor
from reservation import Fact, FactKind, Ledger
from tests.sim.simlog import SimLog
from tests.sim.world import sim_config

SKUS = ("D", "A")  # on shards 0 and 1 of two (checked by the rig)


async def until_turns(condition: Callable[[], bool], what: str, turns: int = 500) -> None:
    """Let the event loop turn until ``condition()`` holds; fail naming ``what`` after ``turns``
    turns (a bound counted in turns, not in time: nothing here waits for a clock)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(what)


class TwoShards:
    """Two shard actors and an engine over a SimLog (on a cluster with ``cluster``: one script per
    group, orders spanning shards decided by sagas); 10 units of each SKU at DC, durable."""

    def __init__(self, cluster: bool = False, retention_ms: int | None = None) -> None:
        self.log = SimLog(together=not cluster)
        self.clock = ManualClock(1_700_000_000_000)
        config = sim_config(shards=2)
        if retention_ms is not None:
            config = dataclasses.replace(config, limits=dataclasses.replace(config.limits, retention_ms=retention_ms))
        self.config, self.limits = config, config.limits
        actors = [ShardActor(s, Ledger(s, self.limits), self.log, self.clock, config.shard_settings, 0)  # type: ignore[arg-type]
                  for s in range(2)]
        self.engine = Engine(actors, self.log, self.clock, config.engine_settings)  # type: ignore[arg-type]
        assert [self.engine.place(sku) for sku in SKUS] == [0, 1]

    async def start(self) -> None:
        for actor in self.engine.actors:
            actor.start()
        stock = [self.engine.actors[s].submit(lambda ledger, now, sku=sku: ledger.record_fact(
                     Fact(f"stock-{sku}", "wms", FactKind.RECEIPT, sku, "DC", 10, now))) for s, sku in enumerate(SKUS)]
        await self.pump_until_done(stock)

    async def pump_until_done(self, futures: list[Any], turns: int = 400) -> None:
        """Answer appends, and let shards in doubt settle (the maintenance timer's job in the service)."""
        for _ in range(turns):
            await asyncio.sleep(0)
            self.log.pump("ok")
            for actor in self.engine.actors:
                if actor.in_doubt:
                    actor.request_maintenance()
            if all(f.done() for f in futures) and self.quiet():
                return
        raise AssertionError("never settled")

    def quiet(self) -> bool:
        return all(not a._inflight and not a._doubt and not a._set_aside and a._mailbox.empty()
                   for a in self.engine.actors)

    async def run(self, call: Awaitable[Any]) -> Any:
        task = asyncio.ensure_future(call)
        await self.pump_until_done([task])
        return task.result()

    async def stop(self) -> None:
        await self.engine.stop(snapshot=False)


@contextlib.asynccontextmanager
async def running(rig: TwoShards) -> AsyncIterator[Any]:
    """``async with running(rig) as started``: ``rig`` started, and stopped when the block ends, however it ends."""
    await rig.start()
    try:
        yield rig
    finally:
        await rig.stop()
