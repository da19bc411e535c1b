"""The seeded client calls of a step: reserves (one shard, across shards, and many at once as the
ReserveStream sends them; with ``--groups`` lines naming location groups too), confirm/release/fulfil,
facts (out of time order, duplicates, conflicts, till receipts sharing an id, ties, SHIPMENTs naming a
reservation), safety stock and maintenance."""

from __future__ import annotations

import random
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

from atp_service.intake.refusals import transient
from reservation import (
    CountRows,
    DomainError,
    Fact,
    FactKind,
    FactOutcome,
    InvalidArgument,
    LineRequest,
    Reservation,
    ReserveCommand,
    State,
    reserve_command,
)
from reservation._bulk import count_event_id
from tests.sim.answers import Answers
from tests.sim.checks import Acknowledged, Violation
from tests.sim.faults import Call
from tests.sim.groups import channel, location_or_group
from tests.sim.shortgrace import Stamps
from tests.sim.streams import Forwarded
from tests.sim.world import World

if TYPE_CHECKING:
    from tests.sim.facttimes import FactTimes
    from tests.sim.shed import ShedCalls, Shedding

# A, C on shard 2, B on shard 1, J on shard 0 (of 3): two lines span shards two times in three.
SKUS = ("A", "B", "J", "C")
LOCATIONS = ("L1", "L2", "L3")
SOURCES = ("pos", "wms")
KINDS = ("reserve", "reserve_many", "confirm", "release", "fulfil", "facts", "load", "safety", "maintenance")
WEIGHTS = (6, 2, 2, 1, 1, 5, 1, 0.3, 0.6)


class Commands:
    def __init__(self, seed: int, rng: random.Random, world: World, acked: Acknowledged,
                 other_content: bool = True) -> None:
        self.seed, self.rng, self.world, self.acked = seed, rng, world, acked
        self.other_content = other_content
        """Whether a retry may carry other content than its id's first Reserve (R5: refused). With several
        processes only when asked (``--retry-other-content``; refused at any process since the id claims,
        ``engine/ids.py``), so that the multi-process seeds found before draw as they did."""
        self.rids: list[str] = []
        self.answers = Answers()  # what each Reserve was answered (R5, R8: ``answers.py``)
        self.facts: list[Fact] = []
        self.fact_batches: list[list[Fact]] = []  # every batch sent, in order (E1/E8 by shard count)
        self.abandoned: list[ReserveCommand] = []  # reserves whose caller gave up (R8)
        self.released: set[str] = set()  # the reservations a Release was sent for (R3: only it frees committed units)
        self.n = 0
        self.times: FactTimes | None = None  # ``--fact-times``: facts stamped in the future or late
        self.shed: Shedding | None = None  # ``--shed``: ids whose Reserve was shed are sent again first
        self.shed_calls: ShedCalls | None = None  # ... and each call's reservations kept as it is sent
        self.stamps = Stamps()  # ``--short-grace``: first sends stamped closer to the clock (``shortgrace.py``)

    def call(self) -> Call:
        kind = self.rng.choices(KINDS, WEIGHTS)[0]
        if kind == "reserve" or (not self.rids and kind in ("confirm", "release", "fulfil")):
            return self.reserve()
        make = {"reserve_many": self.reserve_many, "confirm": self.confirm, "release": self.release,
                "fulfil": self.fulfil, "facts": self.send_facts, "load": self.load_counts, "safety": self.safety,
                "maintenance": self.maintenance}[kind]
        return make()

    # -- reservations ------------------------------------------------------------------------------
    def command(self) -> ReserveCommand:
        if self.shed is not None and self.shed.retry:
            rid = self.shed.retry.pop(0)  # R5: a Reserve refused for load, sent again with its id
            self.shed.tally.shed_retries += 1
        elif self.rids and self.rng.random() < 0.15:
            # a retry (same content replays it, other content is refused): mostly of a recent id, whose
            # first attempt may still be in flight or in doubt
            rid = self.rng.choice(self.rids[-4:] if self.rng.random() < 0.6 else self.rids)
        else:
            rid = f"r{self.next()}"
            self.rids.append(rid)
        same = self.rng.random() < 0.7 or not self.other_content
        rng = random.Random(zlib.crc32(rid.encode()) ^ self.seed) if same else self.rng
        if self.world.groups:  # ``--groups``: lines naming a location group too, over channels of each strategy
            lines = [(rng.choice(SKUS), location_or_group(rng, LOCATIONS), rng.randint(1, 3))
                     for _ in range(rng.randint(1, 3))]
            sold_by = channel(rng)
        else:
            lines = [(rng.choice(SKUS), rng.choice(LOCATIONS), rng.randint(1, 3)) for _ in range(rng.randint(1, 3))]
            sold_by = "web"
        return reserve_command(reservation_id=rid, order_ref="o", channel=sold_by, lines=lines,
                               ttl_seconds=rng.randint(1, 30), allow_partial=rng.random() < 0.2,
                               limits=self.world.config.limits)

    def reserve(self) -> Call:
        cmd = self.command()
        self.note_span(cmd)
        self.answers.sent([cmd])

        def book(result: Any) -> None:
            self.answers.told([cmd], [result])
            self.book_reservation(result[0])

        call = Call(f"reserve {cmd.reservation_id} {_lines(cmd)}", lambda: self.world.eng.reserve(cmd),
                    book, on_abandoned=lambda: self.abandoned.append(cmd))
        return self.watched(call, [cmd.reservation_id])

    def reserve_many(self) -> Call:
        cmds = [self.command() for _ in range(self.rng.randint(2, 4))]
        for cmd in cmds:
            self.note_span(cmd)
        self.answers.sent(cmds)

        def book(results: list[Any]) -> None:
            self.answers.told(cmds, results)
            for result in results:
                if isinstance(result, Forwarded):  # its owner's answer (``--forward-streams``): the wire says HELD, or
                    if result.state == State.HELD:  # REJECTED for nothing granted (an order given up EXPIRED too)
                        self.acked.reservations[result.reservation_id] = result.state
                elif not isinstance(result, DomainError):
                    self.book_reservation(result[0])

        label = "reserve_many " + "; ".join(f"{c.reservation_id} {_lines(c)}" for c in cmds)
        return self.watched(Call(label, lambda: self.world.eng.reserve_many(cmds), book,
                                 on_abandoned=lambda: self.abandoned.extend(cmds)), [c.reservation_id for c in cmds])

    def watched(self, call: Call, rids: list[str]) -> Call:
        """``--shed``: the call's reservations as it is sent, kept: refused for load, it must leave them so."""
        if self.shed_calls is not None:
            self.shed_calls.watch(call, rids)
        return call

    def note_span(self, cmd: ReserveCommand) -> None:
        if len({self.world.eng.place(line.sku) for line in cmd.lines}) > 1:
            self.world.log.tally.cross_shard += 1
            if self.world.eng.orders is not None:
                self.world.log.tally.sagas += 1

    def confirm(self) -> Call:
        rid = self.rng.choice(self.rids)
        return self.watched(Call(f"confirm {rid}", lambda: self.world.eng.confirm(rid), self.book_reservation), [rid])

    def release(self) -> Call:
        return self.resolve("release")

    def fulfil(self) -> Call:
        return self.resolve("fulfil")

    def resolve(self, kind: str) -> Call:
        rid = self.rng.choice(self.rids)
        lines = self.partial_lines(rid)
        op = f"op-{self.next()}" if lines else ""
        if kind == "release":
            self.released.add(rid)

        def start() -> Any:
            eng = self.world.eng
            return eng.release(rid, lines, op) if kind == "release" else eng.fulfill(rid, lines, op)

        return self.watched(Call(f"{kind} {rid}{' partly' if lines else ''}", start, self.book_reservation), [rid])

    def record(self, rid: str) -> Reservation | None:
        return next((a.ledger.reservations[rid] for a in self.world.eng.actors if rid in a.ledger.reservations), None)

    def partial_lines(self, rid: str) -> tuple[LineRequest, ...]:
        rec = self.record(rid)
        if rec is None or self.rng.random() < 0.5:
            return ()
        line = self.rng.choice(rec.lines)
        return (LineRequest(line.sku, line.location, self.rng.randint(1, 2)),)

    # -- facts ----------------------------------------------------------------------------------------
    def send_facts(self) -> Call:
        batch = [self.fact() for _ in range(self.rng.randint(1, 5))]
        times = self.times
        self.fact_batches.append(batch if times is None else times.replayed(batch))
        label = "facts " + str([(f.source, f.event_id, FactKind(f.kind).name, f.sku, f.location, f.quantity,
                                 f.reservation_id) + ((f.event_time - self.now(),) if times else ()) for f in batch])
        if times is None:
            return self.watched_facts(Call(label, lambda: self.world.fact_desk.record(batch, "sim"),
                                           lambda results: self.book_facts(batch, results)), batch)

        def book(results: list[Any]) -> None:
            times.book(batch, results, self.world.eng.place, self.now(), self.world.config.limits.fact_future_skew_ms,
                       self.stamps.grace_ms or self.world.config.limits.fact_grace_ms)
            self.book_facts(batch, results)

        return self.watched_facts(Call(label, lambda: self.world.judged_record(batch), book), batch)

    def watched_facts(self, call: Call, batch: list[Fact]) -> Call:
        """``--shed``: a fact refused for load must not be applied by the call."""
        if self.shed_calls is not None:
            self.shed_calls.watch_facts(call, batch)
        return call

    def load_counts(self) -> Call:
        """An ERP block (LoadCounts): counts as of one time, with now and then a resend of an
        earlier count (E8), another quantity for it (a conflict) or a position named twice."""
        as_of = self.stamps.before(self.now(), self.rng.randint(0, 120_000))
        batch: list[Fact] = []
        for _ in range(self.rng.randint(1, 6)):
            counts = [f for f in self.facts if f.kind == FactKind.COUNT and f.source == "erp"]
            roll = self.rng.random()
            if counts and roll < 0.3:
                old = self.rng.choice(counts)
                batch.append(old if roll < 0.2 else Fact(old.event_id, "erp", FactKind.COUNT, old.sku,
                                                         old.location, old.quantity + 1, old.event_time))
                continue
            fact = Fact(count_event_id(as_of), "erp", FactKind.COUNT, self.rng.choice(SKUS),
                        self.rng.choice(LOCATIONS), self.rng.randint(0, 12), as_of)
            self.facts.append(fact)
            batch.append(fact)
        self.fact_batches.append(batch)
        block = CountRows("erp", SKUS, LOCATIONS, np.array([SKUS.index(f.sku) for f in batch], dtype=np.uint32),
                          np.array([LOCATIONS.index(f.location) for f in batch], dtype=np.uint32),
                          np.array([f.quantity for f in batch], dtype=np.int64),
                          np.array([f.event_time for f in batch], dtype=np.int64))
        label = "load " + str([(f.event_id, f.sku, f.location, f.quantity) for f in batch])
        def book(answer: Any) -> None:
            self.book_facts(batch, [(FactOutcome(o), answer[1].get(i, "")) for i, o in enumerate(answer[0].tolist())])

        return self.watched_facts(Call(label, lambda: self.world.fact_desk.load_counts(block, "sim"), book), batch)

    def fact(self) -> Fact:
        roll = self.rng.random()
        if self.facts and roll < 0.12:
            return self.rng.choice(self.facts)  # a duplicate (E8), same payload
        if self.facts and roll < 0.16:
            old = self.rng.choice(self.facts)  # a conflict (E8): same identity, another quantity
            qty = old.quantity + 1 if old.quantity != -1 else -2
            return Fact(old.event_id, old.source, old.kind, old.sku, old.location, qty, old.event_time,
                        old.reservation_id)
        if roll < 0.26 and (shipment := self.shipment()) is not None:
            return shipment
        return self.plain_fact()

    def plain_fact(self) -> Fact:
        kind = self.rng.choice((FactKind.SALE, FactKind.RETURN, FactKind.RECEIPT, FactKind.ADJUST,
                                FactKind.COUNT, FactKind.RECEIPT, FactKind.SHIPMENT))
        if kind == FactKind.ADJUST:
            qty = self.rng.randint(-3, 3) or 1
        else:
            qty = self.rng.randint(0 if kind == FactKind.COUNT else 1, 12)
        event_id, event_time = f"f{self.next()}", self.stamps.before(self.now(), self.rng.randint(0, 120_000))
        if self.facts and self.rng.random() < 0.2:  # out of order, above; E1 ties, and E8: a till receipt's lines
            other = self.rng.choice(self.facts)  # share an id (an earlier identity only at its own time)
            tie = self.stamps.may_tie(self.now(), other.event_time)
            event_time = other.event_time if tie else event_time
            if self.rng.random() < 0.5 and tie:
                event_id = other.event_id
        fact = Fact(event_id, self.rng.choice(SOURCES), kind, self.rng.choice(SKUS), self.rng.choice(LOCATIONS),
                    qty, event_time)
        if self.times is not None and (odd := self.times.restamp(fact, self.now(), self.world.eng.place(fact.sku),
                                                                 self.world.config.limits)) is not None:
            fact = odd
            if odd not in self.times.within:
                return odd  # past the skew or late: never resent, tied nor contradicted (``facttimes.py``)
        self.facts.append(fact)
        return fact

    def shipment(self) -> Fact | None:
        """A SHIPMENT naming a reservation (R4 through a fact): of a line it commits, or any."""
        rid = self.rng.choice(self.rids) if self.rids else None
        rec = self.record(rid) if rid else None
        if rid is None or rec is None:
            return None
        line = self.rng.choice(rec.lines)
        qty = self.rng.randint(1, max(1, line.committed + 1))
        sku, loc = (line.sku, line.location) if self.rng.random() < 0.9 else (self.rng.choice(SKUS), line.location)
        if self.world.eng.place(sku) != self.world.eng.home_of(rid):
            self.world.log.tally.cross_shard += 1
        fact = Fact(f"s{self.next()}", "wms", FactKind.SHIPMENT, sku, loc, qty, self.now(), rid)
        self.facts.append(fact)
        return fact

    # -- the rest ---------------------------------------------------------------------------------------
    def safety(self) -> Call:
        sku, loc, qty = self.rng.choice(SKUS), self.rng.choice(LOCATIONS), self.rng.randint(0, 2)
        return Call(f"safety {sku}@{loc} = {qty}", lambda: self.world.eng.set_safety_stock(sku, loc, qty),
                    lambda _: None)

    def maintenance(self) -> Call:
        """Expiry (across shards too: coordinated in the background), eviction, snapshots."""
        return Call("maintenance", lambda: self.world.eng.run_maintenance(), lambda _: None)

    # -- booking what the client was told -----------------------------------------------------------
    def book_reservation(self, rec: Reservation) -> None:
        self.acked.reservations[rec.reservation_id] = State(rec.state)
        if self.world.groups and rec.state == State.HELD:  # as first answered (a replay answers the same)
            given: dict[tuple[str, str], int] = {}
            for line in rec.lines:
                if line.group and line.granted:
                    given[(line.sku, line.group)] = given.get((line.sku, line.group), 0) + 1
            self.world.log.tally.group_lines += len(given)
            self.world.log.tally.group_splits += sum(n > 1 for n in given.values())

    def book_facts(self, batch: list[Fact], results: list[Any]) -> None:
        """Each fact answered as recorded booked; one refused for good is a violation (Q1, R4): a fact says what
        happened in the building — a SHIPMENT's units left whatever its reservation can take — and an input
        stream dead-letters it, on_hand never moved. Only bad input (E7: stamped in the future) is refused so."""
        for fact, result in zip(batch, results, strict=True):
            if isinstance(result, DomainError):
                if not transient(result) and not isinstance(result, InvalidArgument):
                    named = f" naming {fact.reservation_id!r}" if fact.reservation_id else ""
                    raise Violation(f"Q1/R4: {FactKind(fact.kind).name} {fact.source}/{fact.event_id}{named} refused "
                                    f"for good ({result.reason.name}: {result.message}): on_hand never moves for it")
                continue
            if result[0] in (FactOutcome.APPLIED, FactOutcome.ABSORBED, FactOutcome.DUPLICATE):
                self.acked.facts.add((fact.source, fact.event_id))
            self.stamps.book_resend(fact, result, self.acked.facts, self.world.log.tally, self.now())

    def now(self) -> int:
        return self.world.clock.now_ms()

    def next(self) -> int:
        self.n += 1
        return self.n


def _lines(cmd: ReserveCommand) -> list[tuple[str, str, int]]:
    return [(line.sku, line.location, line.quantity) for line in cmd.lines]
