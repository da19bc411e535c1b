"""The seeded generator: commands, facts in random time order, duplicates, failures, crashes.

``python -m tests.sim --seeds 100000`` (``make sim SEEDS=100000``) runs many; ``--seed N`` replays one.
"""

from __future__ import annotations

import asyncio
import random
import zlib
from typing import Any

from reservation import (
    DomainError,
    Fact,
    FactKind,
    FactOutcome,
    LineRequest,
    Reservation,
    State,
    reserve_command,
)

from .checks import Acknowledged, Violation, check
from .world import World

SKUS = ("A", "B", "C", "D")
LOCATIONS = ("L1", "L2", "L3")
OUTCOMES = ("ok", "ok", "ok", "ok", "ok", "ok", "ok", "ok", "lost", "doubt", "late")


class Driver:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.world = World()
        self.acked = Acknowledged()
        self.rids: list[str] = []
        self.facts: list[Fact] = []
        self.n = 0
        self.trace: list[str] = []

    async def run(self, steps: int) -> None:
        await self.world.boot()
        try:
            for step in range(steps):
                await self.step(step)
                check(self.world, self.acked)
                await self.check_replay_equals_live()
        except Exception as exc:
            tail = "\n  ".join(self.trace[-12:])
            raise Violation(f"seed {self.seed}: {exc}\n  last steps:\n  {tail}\n"
                            f"replay: .venv/bin/python -m tests.sim --seed {self.seed}") from exc

    async def step(self, step: int) -> None:
        roll = self.rng.random()
        if roll < 0.06:
            land = self.rng.random() < 0.5
            self.trace.append(f"{step}: crash (in-flight appends {'landed' if land else 'lost'})")
            await self.crash(land)
        elif roll < 0.2:
            ms = self.rng.randint(0, 20_000)
            self.trace.append(f"{step}: clock +{ms} ms, maintenance")
            self.world.clock.advance(ms)
            await self.world.maintain()
        else:
            work = [self.command() for _ in range(self.rng.randint(1, 4))]
            outcome = self.rng.choice(OUTCOMES)
            self.trace.append(f"{step}: {[w[0] for w in work]} first append {outcome}")
            results = await self.world.settle([w[1] for w in work], outcome)
            for (_, _, on_ok), result in zip(work, results, strict=True):
                if not isinstance(result, BaseException):
                    on_ok(result)
                elif not isinstance(result, DomainError):
                    raise result

    async def crash(self, land: bool) -> None:
        tasks = [asyncio.ensure_future(self.command()[1]) for _ in range(self.rng.randint(0, 3))]
        for _ in range(self.rng.randint(0, 6)):
            await asyncio.sleep(0)
        await self.world.crash_and_recover(land)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # the callers never heard back: nothing acked

    async def check_replay_equals_live(self) -> None:
        """E10/R7: with nothing in flight, memory equals a fresh start from the log."""
        for actor, (ledger, seq) in zip(self.world.eng.actors, await self.world.recovered(), strict=True):
            live, fresh = actor.ledger, ledger
            if seq != actor.seq:
                raise Violation(f"E10: shard {actor.shard} memory at entry {actor.seq}, log at {seq}")
            if sorted(live.store.items()) != sorted(fresh.store.items()):
                raise Violation(f"E10: shard {actor.shard} positions differ from a replay of the log")
            if live.reservations != fresh.reservations:
                raise Violation(f"E10: shard {actor.shard} reservations differ from a replay of the log")

    # -- commands: (label, awaitable, what to book when it succeeds) ----------------------------
    def command(self) -> tuple[str, Any, Any]:
        kind = self.rng.choices(("reserve", "confirm", "release", "fulfil", "facts"), (5, 2, 1, 1, 4))[0]
        if kind == "reserve" or not self.rids:
            return self.reserve()
        if kind == "facts":
            return self.record_facts()
        rid = self.rng.choice(self.rids)
        eng = self.world.eng
        if kind == "confirm":
            return f"confirm {rid}", eng.confirm(rid), self.book_reservation
        lines = self.partial_lines(rid)
        op = f"op-{self.next()}" if lines else ""
        call = eng.release(rid, lines, op) if kind == "release" else eng.fulfill(rid, lines, op)
        return f"{kind} {rid}{' partly' if lines else ''}", call, self.book_reservation

    def reserve(self) -> tuple[str, Any, Any]:
        if self.rids and self.rng.random() < 0.15:
            rid = self.rng.choice(self.rids)  # a retry: same content replays, other content is refused
        else:
            rid = f"r{self.next()}"
            self.rids.append(rid)
        rng = random.Random(zlib.crc32(rid.encode()) ^ self.seed) if self.rng.random() < 0.8 else self.rng
        lines = [(rng.choice(SKUS), rng.choice(LOCATIONS), rng.randint(1, 3)) for _ in range(rng.randint(1, 3))]
        cmd = reserve_command(reservation_id=rid, order_ref="o", channel="web", lines=lines,
                              ttl_seconds=rng.randint(1, 30), allow_partial=rng.random() < 0.2,
                              limits=self.world.config.limits)
        return f"reserve {rid} {lines}", self.world.eng.reserve(cmd), lambda r: self.book_reservation(r[0])

    def partial_lines(self, rid: str) -> tuple[LineRequest, ...]:
        rec = self.world.eng.actors[0].ledger.reservations.get(rid) or next(
            (a.ledger.reservations[rid] for a in self.world.eng.actors if rid in a.ledger.reservations), None)
        if rec is None or self.rng.random() < 0.5:
            return ()
        line = self.rng.choice(rec.lines)
        return (LineRequest(line.sku, line.location, self.rng.randint(1, 2)),)

    def record_facts(self) -> tuple[str, Any, Any]:
        now = self.world.clock.now_ms()
        batch: list[Fact] = []
        for _ in range(self.rng.randint(1, 5)):
            if self.facts and self.rng.random() < 0.15:
                batch.append(self.rng.choice(self.facts))  # a duplicate (E8), same payload
                continue
            kind = self.rng.choice((FactKind.SALE, FactKind.RETURN, FactKind.RECEIPT, FactKind.ADJUST,
                                    FactKind.COUNT, FactKind.RECEIPT))
            if kind == FactKind.ADJUST:
                qty = self.rng.randint(-3, 3) or 1
            else:
                qty = self.rng.randint(0 if kind == FactKind.COUNT else 1, 12)
            fact = Fact(f"f{self.next()}", self.rng.choice(("pos", "wms")), kind, self.rng.choice(SKUS),
                        self.rng.choice(LOCATIONS), qty, now - self.rng.randint(0, 120_000))  # out of order
            self.facts.append(fact)
            batch.append(fact)
        eng = self.world.eng
        by_shard: dict[int, list[Fact]] = {}
        for f in batch:
            by_shard.setdefault(eng.place(f.sku), []).append(f)

        async def send() -> list[tuple[Fact, Any]]:
            out = []
            for shard, facts in by_shard.items():
                results = await eng.actors[shard].submit(lambda ledger, _now, fs=facts: [ledger.record_fact(f)
                                                                                          for f in fs])
                out += list(zip(facts, results, strict=True))
            return out

        return f"facts {[(f.event_id, f.kind.name, f.sku, f.location, f.quantity) for f in batch]}", send(), \
            self.book_facts

    # -- booking what the client was told ----------------------------------------------------------
    def book_reservation(self, rec: Reservation) -> None:
        self.acked.reservations[rec.reservation_id] = State(rec.state)

    def book_facts(self, results: list[tuple[Fact, Any]]) -> None:
        for fact, (outcome, _) in results:
            if outcome in (FactOutcome.APPLIED, FactOutcome.ABSORBED, FactOutcome.DUPLICATE):
                self.acked.facts.add((fact.source, fact.event_id))

    def next(self) -> int:
        self.n += 1
        return self.n


async def run_seed(seed: int, steps: int = 60) -> World:
    driver = Driver(seed)
    await driver.run(steps)
    return driver.world
