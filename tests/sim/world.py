"""One simulated service: the real engine and shard actors over ``SimLog`` with a manual clock.

Nothing here sleeps or touches a socket, so a seed decides everything: the same seed replays
the same run. The driver (``driver.py``) sends commands, answers the log's appends with chosen
outcomes, crashes the process and recovers it; ``checks.py`` says whether the result is right.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any

from atp_service.clock import ManualClock
from atp_service.config import ServiceConfig
from atp_service.engine import Engine
from atp_service.shard import ShardActor
from reservation import Fact, Ledger, Limits, decode_entry

from .simlog import SimLog

START_MS = 1_700_000_000_000
PUMP_ROUNDS = 400


def sim_config() -> ServiceConfig:
    """Small enough that batches, pipelines, snapshots and cross-shard orders all happen often."""
    limits = Limits(retention_ms=10**12, fact_grace_ms=10**12)  # nothing forgotten: every ack stays checkable
    return ServiceConfig(port=0, metrics_port=-1, shards=3, demo=False, auth="off", batch_max=6,
                         pipeline_depth=3, mailbox_size=256, snapshot_every_entries=7, limits=limits)


class World:
    def __init__(self) -> None:
        self.log = SimLog()
        self.clock = ManualClock(START_MS)
        self.config = sim_config()
        self.engine: Engine | None = None
        self.recoveries = 0

    @property
    def eng(self) -> Engine:
        assert self.engine is not None
        return self.engine

    async def recovered(self) -> list[tuple[Ledger, int]]:
        """Start-up exactly as the service does it: snapshot, then the log after it, per shard."""
        out = []
        for shard in range(self.config.shards):
            snap = await self.log.load_snapshot(shard)
            limits = self.config.limits
            ledger = Ledger.restore(shard, limits, snap.ledger) if snap else Ledger(shard, limits)
            seq = snap.seq if snap else 0
            async for entry_seq, data in self.log.entries_after(shard, seq):
                ledger.replay(decode_entry(data))
                seq = entry_seq
            out.append((ledger, seq))
        return out

    async def boot(self) -> None:
        await self.log.load_fences(self.config.shards)
        actors = []
        for ledger, seq in await self.recovered():
            actors.append(ShardActor(ledger.shard, ledger, self.log, self.clock, self.config, seq))  # type: ignore[arg-type]
        self.clock.advance_floor(max(a.ledger.clock for a in actors))
        self.engine = Engine(actors, self.log, self.clock, self.config)  # type: ignore[arg-type]
        for actor in self.engine.actors:
            actor.start()  # no maintenance timer: the driver runs maintenance as a step

    async def crash_and_recover(self, land_in_flight: bool) -> None:
        """kill -9: tasks gone mid-flight, sent appends landed or not (all together), then a restart."""
        for actor in self.eng.actors:
            if actor._task is not None:
                actor._task.cancel()
        for task in list(self.eng._background):
            task.cancel()
        await asyncio.sleep(0)
        self.log.crash(land_in_flight)
        self.engine = None
        self.recoveries += 1
        await self.boot()

    async def settle(self, work: Iterable[Awaitable[Any]], first_outcome: str) -> list[Any]:
        """Run commands to their answers while the log answers: ``first_outcome`` for what they send
        first, ``ok`` after; shards left in doubt are settled through maintenance."""
        tasks = [asyncio.ensure_future(w) for w in work]
        outcome = first_outcome
        for _ in range(PUMP_ROUNDS):
            for _ in range(4):
                await asyncio.sleep(0)
            if self.log.pending:
                self.log.pump(outcome)
                outcome = "ok"
                continue
            if all(t.done() for t in tasks) and not self._busy():
                break
            for actor in self.eng.actors:
                actor.request_maintenance()
        else:
            raise AssertionError("simulation stuck: commands or shards never settled")
        return [t.exception() or t.result() for t in tasks]

    def _busy(self) -> bool:
        return any(a._inflight or a._doubt or not a._mailbox.empty() or a._held for a in self.eng.actors) or bool(
            self.eng._background)

    async def maintain(self) -> None:
        """One maintenance pass (expiry, eviction, snapshots when due), as the timer would run it."""
        await self.settle([self.eng.run_maintenance()], "ok")
        for actor in self.eng.actors:
            actor.request_maintenance()
        await self.settle([], "ok")

    def logged_facts(self) -> list[Fact]:
        """Every fact the log ever recorded as applied (the history is never trimmed)."""
        from reservation._events import FactApplied

        out = []
        for entries in self.log.history.values():
            for _, data in entries:
                out += [e.fact for e in decode_entry(data).events if isinstance(e, FactApplied)]
        return out
