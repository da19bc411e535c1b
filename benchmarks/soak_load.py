"""The load of ``fault_soak.py``: callers sending what an OMS, POS tills and a WMS send at a peak,
each call with its own deadline between 1 ms and 2 s (many are cancelled mid-flight), and a book of
every answer that acknowledged something — what the end of the soak checks against.

Callers: order lifecycles (Reserve on one shard or across shards, then Confirm, Release, Fulfil or a
SHIPMENT fact naming the reservation), ReserveStream clients whose streams end by deadline or are
cancelled (``soak_streams.py``), and a fact feed (WMS receipts at the DCs, POS sales and returns at the stores). A call
whose outcome is unknown (deadline, cancellation, UNAVAILABLE) is retried with the same id and the
same content some of the time, as an OMS would, and otherwise left in doubt.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import zlib
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from atp_client import duration, lost_in_core, timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb

T = TypeVar("T")
DCS = ("dc-1", "dc-2")
"""Where orders reserve; only receipts and shipments naming a reservation move stock there, so no
fact can explain units promised beyond what is on hand."""
STORES = ("store-1", "store-2")
"""Where POS sales and returns land (no reservations: a sale may take a store below zero, Q5)."""
SKUS_PER_SHARD = 3
DC_STOCK, STORE_STOCK = 40, 30
MIN_DEADLINE_S, MAX_DEADLINE_S = 0.001, 2.0
RETRY_P = 0.5
RETRIES = 2
IDLE_MAX = 500
"""Stream-acknowledged holds waiting for a lifecycle caller to confirm or release them."""
MAX_TRIED = 400_000
"""Ids the book may hold; past it no new reservations are started (a bound on the soak's memory)."""
DECIDED = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND,
                     grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.INVALID_ARGUMENT})
"""Answers that decide (a refusal the service made), unlike a deadline, a cancellation or a shed."""
ODD = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS})
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
TERMINAL = frozenset({pb.RESERVATION_STATE_FULFILLED, pb.RESERVATION_STATE_RELEASED, pb.RESERVATION_STATE_EXPIRED,
                      pb.RESERVATION_STATE_REJECTED})
KEPT = frozenset({pb.FACT_OUTCOME_APPLIED, pb.FACT_OUTCOME_DUPLICATE, pb.FACT_OUTCOME_ABSORBED})
"""Fact outcomes that acknowledge the fact as part of the state."""


def shard_of(sku: str, shards: int) -> int:
    """The service's placement of a SKU (``Engine.place``: a stable hash of the SKU)."""
    return zlib.crc32(sku.encode()) % shards


def skus_by_shard(prefix: str, shards: int, per_shard: int) -> list[list[str]]:
    """``per_shard`` SKU names for every shard, found by trying names in order."""
    out: list[list[str]] = [[] for _ in range(shards)]
    n = 0
    while any(len(s) < per_shard for s in out):
        sku = f"{prefix}-{n:04d}"
        if len(out[shard_of(sku, shards)]) < per_shard:
            out[shard_of(sku, shards)].append(sku)
        n += 1
    return out


@dataclass(frozen=True)
class Layout:
    """The positions of the soak: a few SKUs on every shard, at two DCs and two stores."""

    shards: int
    skus: list[list[str]]
    probes: list[str]
    """One SKU per shard for the liveness probes (a read and a write on every shard)."""

    @classmethod
    def make(cls, shards: int) -> Layout:
        return cls(shards, skus_by_shard("soak", shards, SKUS_PER_SHARD),
                   [s[0] for s in skus_by_shard("probe", shards, 1)])

    @property
    def all_skus(self) -> list[str]:
        return [sku for shard in self.skus for sku in shard]

    def positions(self) -> list[tuple[str, str]]:
        """Every position the callers and the probes touch."""
        return [(sku, loc) for sku in self.all_skus for loc in DCS + STORES] + [(p, DCS[0]) for p in self.probes]

    def seed_facts(self, now_ms: int) -> list[pb.Fact]:
        return [pb.Fact(event_id=f"seed-{sku}-{loc}", source="soak-wms", kind=pb.FACT_KIND_COUNT, sku=sku, location=loc,
                        quantity=DC_STOCK if loc in DCS else STORE_STOCK, event_time=timestamp(now_ms - 60_000))
                for sku in self.all_skus for loc in DCS + STORES]


@dataclass
class Book:
    """What the service acknowledged, what was tried, and how every call ended."""

    acked: dict[str, int] = field(default_factory=dict)
    """Reservation id -> the furthest state an answer acknowledged."""
    requests: dict[str, pb.ReserveRequest] = field(default_factory=dict)
    """Every reservation id tried, as sent."""
    granted: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)
    """Acknowledged HELD: the units granted per line."""
    doubt: set[str] = field(default_factory=set)
    """Reservations with a call whose outcome is unknown (it may still land)."""
    facts_acked: dict[str, tuple[str, str]] = field(default_factory=dict)
    facts_tried: dict[str, tuple[str, str]] = field(default_factory=dict)
    stock_only: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Units a SHIPMENT took from on hand without fulfilling the reservation it named, per position:
    the one kind of fact here that could explain units promised beyond what is on hand."""
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    odd: dict[tuple[str, str], str] = field(default_factory=dict)
    """The first detail of every (call, status) the service should never answer (UNKNOWN, INTERNAL; a stream ended OK
    with batches unanswered, ``ENDED_EARLY``)."""
    idempotency: list[str] = field(default_factory=list)
    """R5 violations: a retry with the same id and content refused as different."""
    idle: deque[str] = field(default_factory=lambda: deque(maxlen=IDLE_MAX))

    def failed(self, kind: str, exc: grpc.aio.AioRpcError) -> None:
        code = exc.code()
        self.calls[(kind, code.name)] += 1
        if code in ODD and not lost_in_core(exc):  # grpcio's own INTERNAL is no answer of the service's
            self.odd.setdefault((kind, code.name), exc.details() or "")

    def ack(self, rid: str, state: int) -> None:
        if self.acked.get(rid) not in TERMINAL:
            self.acked[rid] = state

    def ack_reserve(self, resp: pb.ReserveResponse) -> None:
        self.ack(resp.reservation_id, resp.state)
        if resp.state == pb.RESERVATION_STATE_HELD:
            self.granted[resp.reservation_id] = [(ln.sku, ln.location, ln.granted) for ln in resp.lines]

    def ack_facts(self, facts: list[pb.Fact], results: list[pb.FactResult]) -> None:
        for fact, result in zip(facts, results, strict=True):
            self.calls[("fact", pb.FactOutcome.Name(result.outcome))] += 1
            if result.outcome in KEPT:
                self.facts_acked[fact.event_id] = (fact.sku, fact.location)
            if fact.kind == pb.FACT_KIND_SHIPMENT and result.outcome == pb.FACT_OUTCOME_APPLIED and result.error:
                self.stock_only[(fact.sku, fact.location)] += fact.quantity  # "stock moved; not fulfilled"

    def figures(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (kind, outcome), n in sorted(self.calls.items()):
            out.setdefault(kind, {})[outcome] = n
        return out


Answer = tuple[Any, grpc.StatusCode | None]
"""(response, None) answered; (None, code) refused with a decision; (None, None) outcome unknown."""


@dataclass
class Caller:
    stub: Any
    book: Book
    layout: Layout
    rng: random.Random
    stop_at: float
    deadlines: tuple[float, float] = (MIN_DEADLINE_S, MAX_DEADLINE_S)

    def going(self) -> bool:
        return time.monotonic() < self.stop_at

    def deadline(self) -> float:
        """Log-uniform over ``deadlines``: from 1 ms to 2 s as many calls get under 45 ms as over it."""
        low, high = self.deadlines
        return math.exp(self.rng.uniform(math.log(low), math.log(high)))

    async def attempt(self, kind: str, call: Callable[[float], Awaitable[Any]],
                      label: Callable[[Any], str] = lambda _: "OK") -> Answer:
        for n in range(1 + RETRIES):
            try:
                resp = await call(self.deadline())
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                self.book.failed(kind, exc)
                if code in DECIDED:
                    return None, code
                if code == grpc.StatusCode.UNAVAILABLE:
                    await self.pause(0.1)  # a restart or an unreachable log: back off a little
                if n < RETRIES and self.rng.random() < RETRY_P:
                    continue  # the same request again: same id, same content (R5)
                return None, None
            self.book.calls[(kind, label(resp))] += 1
            return resp, None
        return None, None

    def lines(self) -> tuple[str, list[pb.Line]]:
        """One shard (one or two SKUs of it) or several (two or three SKUs on different shards)."""
        rng, skus = self.rng, self.layout.skus
        if self.layout.shards > 1 and rng.random() < 0.5:
            shards = rng.sample(range(self.layout.shards), rng.randint(2, min(3, self.layout.shards)))
            picked, kind = [rng.choice(skus[s]) for s in shards], "reserve_multi_shard"
        else:
            picked, kind = rng.sample(skus[rng.randrange(self.layout.shards)], rng.randint(1, 2)), "reserve_one_shard"
        return kind, [pb.Line(sku=s, location=rng.choice(DCS), quantity=rng.randint(1, 3)) for s in picked]

    def request(self, rid: str) -> tuple[str, pb.ReserveRequest]:
        kind, lines = self.lines()
        ttl = 3600 if self.rng.random() < 0.5 else self.rng.randint(2, 8)  # half the holds expire meanwhile
        req = pb.ReserveRequest(reservation_id=rid, order_ref=f"order-{rid}", channel="web", lines=lines,
                                ttl=duration(ttl))
        self.book.requests[rid] = req
        return kind, req

    async def pause(self, most_s: float) -> None:
        await asyncio.sleep(self.rng.uniform(0, most_s))


async def lifecycles(c: Caller, name: str) -> None:
    n = 0
    while c.going():
        n += 1
        if c.book.idle and c.rng.random() < 0.15:
            await follow_up(c, c.book.idle.popleft())
        elif c.rng.random() < 0.1:
            await read(c)
        elif len(c.book.requests) < MAX_TRIED:
            await reserve_one(c, f"{name}-{n}")
        await c.pause(0.01)


async def read(c: Caller) -> None:
    sku = c.rng.choice(c.layout.all_skus)
    req = pb.GetAvailabilityRequest(keys=[pb.PositionKey(sku=sku, location=loc) for loc in DCS])
    await c.attempt("read", lambda t: c.stub.GetAvailability(req, timeout=t))


async def reserve_one(c: Caller, rid: str) -> None:
    kind, req = c.request(rid)
    resp, refused = await c.attempt(kind, lambda t: c.stub.Reserve(req, timeout=t),
                                    lambda r: pb.ReservationState.Name(r.state))
    if resp is None:
        if refused == grpc.StatusCode.ALREADY_EXISTS:
            c.book.idempotency.append(f"{rid}: a retry with the same content was refused as different")
        c.book.doubt.add(rid)
        return
    c.book.ack_reserve(resp)
    if resp.state == pb.RESERVATION_STATE_HELD:
        await c.pause(0.02)
        await follow_up(c, rid)


async def follow_up(c: Caller, rid: str) -> None:
    """What becomes of a hold: left to its TTL, released, or confirmed and then shipped (a fact),
    fulfilled (the RPC), released or left committed."""
    roll = c.rng.random()
    if roll < 0.25:
        return
    if roll < 0.45:
        await resolve(c, "release", rid)
        return
    if await resolve(c, "confirm", rid) != pb.RESERVATION_STATE_CONFIRMED:
        return
    await c.pause(0.02)
    roll = c.rng.random()
    if roll < 0.4:
        await ship(c, rid)
    elif roll < 0.7:
        await resolve(c, "fulfil", rid)
    elif roll < 0.85:
        await resolve(c, "release", rid)


async def resolve(c: Caller, kind: str, rid: str) -> int | None:
    """Confirm, Release or Fulfil the whole reservation; the state acknowledged, if any."""
    stub = c.stub
    calls: dict[str, Callable[[float], Awaitable[Any]]] = {
        "confirm": lambda t: stub.Confirm(pb.ConfirmRequest(reservation_id=rid), timeout=t),
        "release": lambda t: stub.Release(pb.ReleaseRequest(reservation_id=rid), timeout=t),
        "fulfil": lambda t: stub.Fulfill(pb.FulfillRequest(reservation_id=rid), timeout=t),
    }
    resp, refused = await c.attempt(kind, calls[kind])
    if resp is None:
        if refused is None:
            c.book.doubt.add(rid)
        return None
    state: int = resp.reservation.state
    c.book.ack(rid, state)
    return state


async def ship(c: Caller, rid: str) -> None:
    """SHIPMENT facts naming the reservation, one per line, for the units it committed. Only for a
    reservation no call left in doubt: then it is certainly CONFIRMED and the shipment fulfils it."""
    if rid in c.book.doubt:
        return
    now = int(time.time() * 1000)
    facts = [pb.Fact(event_id=f"ship-{rid}-{i}", source=f"ship-{rid}-{i}", kind=pb.FACT_KIND_SHIPMENT, sku=sku,
                     location=loc, quantity=units, event_time=timestamp(now), reservation_id=rid)
             for i, (sku, loc, units) in enumerate(c.book.granted.get(rid, []))]
    await record(c, "ship", facts)


async def record(c: Caller, kind: str, facts: list[pb.Fact]) -> None:
    for f in facts:
        c.book.facts_tried[f.event_id] = (f.sku, f.location)
    req = pb.RecordEventsRequest(events=facts)
    resp, _ = await c.attempt(kind, lambda t: c.stub.RecordEvents(req, timeout=t))
    if resp is not None:
        c.book.ack_facts(facts, list(resp.results))


async def fact_feed(c: Caller, name: str) -> None:
    """WMS receipts at the DCs (stock back for the orders), POS sales and returns at the stores."""
    n = 0
    while c.going():
        facts = []
        for _ in range(c.rng.randint(1, 5)):
            n += 1
            sku, roll = c.rng.choice(c.layout.all_skus), c.rng.random()
            kind, loc = (pb.FACT_KIND_RECEIPT, c.rng.choice(DCS)) if roll < 0.5 else (
                (pb.FACT_KIND_SALE if roll < 0.85 else pb.FACT_KIND_RETURN), c.rng.choice(STORES))
            wms = kind == pb.FACT_KIND_RECEIPT
            # A source of its own: ExplainAvailability, which the check reads, names a kept delta by its
            # source and time (event ids are not kept in memory).
            facts.append(pb.Fact(event_id=f"{name}-{n}", source=f"{name}-{n}", kind=kind,
                                 sku=sku, location=loc, quantity=c.rng.randint(1, 5 if wms else 3),
                                 event_time=timestamp(int(time.time() * 1000))))
        await record(c, "facts", facts)
        await c.pause(0.05)
