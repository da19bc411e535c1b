"""A seeded random history for the restored-answers check: reserves, their resolutions, facts (late,
duplicate, conflicting, shipments naming reservations), safety stock and the clock moved on, every hold due
expired before the next step so that two runs of one seed decide alike."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.app.restored_history import (
    POSITIONS,
    Call,
    T,
    World,
    ask,
    expired_due,
    fact,
    record,
    reserve,
    safety,
    step,
)

SKUS = sorted({s for s, _ in POSITIONS})
PLACES = ["dc-1", "store-1", "store-2", "store-3", "north-first", "stores"]
CHANNELS = ["", "web", "pickup", "market"]


class RandomHistory:
    def __init__(self, seed: int, steps: int) -> None:
        self.rng = random.Random(seed)
        self.steps = steps
        self.ids: list[str] = []
        self.facts: list[pb.Fact] = []
        self.calls: list[tuple[str, Call]] = []
        self.ops = 0
        self.asked: dict[str, list[tuple[str, str, int]]] = {}
        self.loads: list[tuple[str, str, int, int]] = []

    def lines(self) -> list[tuple[str, str, int]]:
        rng = self.rng
        return [(rng.choice(SKUS), rng.choice(PLACES), rng.randint(1, 8)) for _ in range(rng.randint(1, 4))]

    def a_reserve(self, n: int) -> tuple[str, Call]:
        rng = self.rng
        rid = f"q{n}"
        self.ids.append(rid)
        kw: dict[str, Any] = {"ttl_seconds": rng.choice([3, 5, 600]), "channel": rng.choice(CHANNELS),
                              "allow_partial": rng.random() < 0.3, "order_ref": rng.choice(["", f"o{n}"])}
        lines = self.lines()
        self.asked[rid] = lines
        if rng.random() < 0.05:
            lines[0] = (lines[0][0], lines[0][1], 0)  # bad input
        return rid, reserve(rid, lines, **kw)

    def a_change(self) -> tuple[str, Call]:
        rng = self.rng
        rid = rng.choice(self.ids)
        kind = rng.choice(["confirm", "confirm", "release", "fulfill"])
        if kind != "confirm" and rng.random() < 0.5:
            self.ops += 1
            sku, place, qty = rng.choice(self.asked[rid])
            where = place if place in ("dc-1", "store-1", "store-2", "store-3") else "store-2"  # a group's: a guess
            line = (sku, where, rng.randint(1, max(qty, 1)))
            return f"{kind} {rid} op{self.ops}", step(kind, rid, [line], f"op{self.ops}")
        return f"{kind} {rid}", step(kind, rid)

    def a_fact(self, now: int) -> pb.Fact:
        rng = self.rng
        if self.facts and rng.random() < 0.15:
            again = self.facts[rng.randrange(len(self.facts))]
            if rng.random() < 0.5:
                return again
            other = pb.Fact()
            other.CopyFrom(again)
            other.quantity += 1
            return other
        sku, loc = rng.choice(POSITIONS)
        kind = rng.choice(["SALE", "RECEIPT", "ADJUST", "COUNT", "SHIPMENT", "RETURN"])
        at = now - rng.choice([0, 0, 1000, 60_000, 25 * 3600 * 1000])
        qty = rng.randint(1, 6) if kind != "COUNT" else rng.randint(0, 30)
        if kind == "ADJUST" and rng.random() < 0.5:
            qty = -qty
        rid = rng.choice(self.ids) if kind == "SHIPMENT" and self.ids and rng.random() < 0.7 else ""
        made = fact(f"f{len(self.facts)}", kind, sku, loc, qty, at, rid, source=rng.choice(["pos", "wms"]))
        self.facts.append(made)
        return made

    def a_load(self, now: int) -> Call:
        """A LoadCounts block of a few rows (a position twice, an older count, a resend of an earlier block's row)."""
        rng = self.rng
        rows = [(*rng.choice(POSITIONS), rng.randint(0, 30), now - rng.choice([0, 500, 60_000, 25 * 3600 * 1000]))
                for _ in range(rng.randint(1, 5))]
        if self.loads and rng.random() < 0.4:
            rows.append(rng.choice(self.loads))
        self.loads += rows
        skus = sorted({r[0] for r in rows})
        locs = sorted({r[1] for r in rows})
        request = pb.LoadCountsRequest(
            source=rng.choice(["erp", "wms"]), skus=skus, locations=locs,
            sku_index=np.array([skus.index(r[0]) for r in rows], np.uint32).tobytes(),
            location_index=np.array([locs.index(r[1]) for r in rows], np.uint32).tobytes(),
            on_hand=np.array([r[2] for r in rows], np.int64).tobytes(),
            as_of=np.array([r[3] for r in rows], np.int64).tobytes())
        return lambda c: c.load_counts(request)

    def build(self, now: int) -> list[tuple[str, Call | int]]:
        """The steps: a call, or a number of milliseconds the clock moves on."""
        rng = self.rng
        out: list[tuple[str, Call | int]] = [("stock", record([fact(f"c-{s}-{loc}", "COUNT", s, loc, 12, T - 60_000)
                                                              for s, loc in POSITIONS]))]
        for n in range(self.steps):
            roll = rng.random()
            if roll < 0.35 or not self.ids:
                out.append(self.a_reserve(n))
            elif roll < 0.6:
                out.append(self.a_change())
            elif roll < 0.8:
                facts = [self.a_fact(now) for _ in range(rng.randint(1, 4))]
                out.append((f"facts {n}", record(facts)))
            elif roll < 0.8 + 0.03:
                out.append((f"load {n}", self.a_load(now)))
            elif roll < 0.86:
                sku, loc = rng.choice(POSITIONS)
                out.append((f"safety {n}", safety(sku, loc, rng.randint(0, 3))))
            else:
                moved = rng.choice([500, 2_000, 4_000])
                now += moved
                out.append((f"clock {n}", moved))
        return out


async def drive_random(world: World, steps: list[tuple[str, Call | int]], ids: list[str],
                       restart_after: frozenset[int], retention_ms: int | None = None) -> dict[str, Any]:
    first: dict[str, Any] = {}
    for i, (name, call) in enumerate(steps):
        if isinstance(call, int):
            world.clock.advance(call)
            await expired_due(world, ids, retention_ms)
        else:
            first[f"{i} {name}"] = await ask(world.client, call)
            world.clock.advance(10)
        if i in restart_after:
            await world.restart()
            await expired_due(world, ids, retention_ms)  # past retention: forgotten by the next housekeeping
    return first


async def random_answers(world: World, steps: list[tuple[str, Call | int]], ids: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {f"get {rid}": await ask(world.client, lambda c, rid=rid: c.get_reservation(rid))
                           for rid in ids}
    out["availability"] = await ask(world.client, lambda c: c.availability(POSITIONS))
    for sku, loc in POSITIONS:
        out[f"explain {sku} {loc}"] = await ask(world.client, lambda c, s=sku, lo=loc: c.stub.ExplainAvailability(
            pb.ExplainAvailabilityRequest(sku=s, location=lo)))
    for i, (name, call) in enumerate(steps):
        if not isinstance(call, int):
            out[f"retry {i} {name}"] = await ask(world.client, call)
    return out
