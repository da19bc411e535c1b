"""What the load generator itself knows: the stock it seeded and every reservation acknowledged to it.

At the end the scenario asks the service and compares (business invariants):
  - no oversell, by what the load generator was told (R2): for every seeded position, the units of
    the reservations acknowledged to this process that hold them now (read HELD or CONFIRMED) are no
    more than its ``on_hand``, and, with ``FULFILLED`` ones, no more than the units ever sent there
    (the seed and this process's receipts) where no other process sends receipts (``alone``); and
    the service's own reserved + committed <= on_hand (no fact lowers a checked position);
  - every acknowledged reservation is visible, in a state its history allows.
A violation is reported as a failed request named ``invariant:…`` (so distributed runs fail too)
and the process exit code is set to 1; a check the service refuses (``invariant:unchecked``) too.
The book talks to the service over the run's connection (TLS, token), set when the run starts.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc

from atp_client import timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from benchmarks.peak.connection import Connection

SEED_CHUNK = 2000
CHECK_KEYS_PER_CALL = 500
CHECK_IN_FLIGHT = 64
"""GetReservation calls at once while checking: every acknowledged reservation is read, tens of
thousands after a long peak."""


@dataclass
class Book:
    run: str = "local"
    connection: Connection | None = None
    stock: dict[tuple[str, str], int] = field(default_factory=dict)
    acknowledged: dict[str, str] = field(default_factory=dict)  # reservation_id -> last acknowledged state
    lines: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)
    """The lines (sku, location, quantity) of each reservation acknowledged held, as this process asked for them."""
    received: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Units of the receipts this process sent to each position, answered or not (they may have arrived)."""
    alone: bool = True
    """No other process sends receipts to the positions this one checks: the seed and ``received`` are every unit
    that can have been there (False for a worker of a scenario with receipts)."""
    violations: list[str] = field(default_factory=list)
    setup_s: float = 0.0
    """How long this run's start (seeding) took: the load shape's clock starts after it, so a run of
    ``--duration`` seconds loads the service that long however slow the seeding was."""
    seeding: bool = False
    """This process is seeding the run's stock: the load shape holds at no users until it is done."""

    def start(self, run: str, connection: Connection) -> None:
        """A new run (the web UI runs one after another in the same processes): nothing of the last one."""
        self.run, self.connection = run, connection
        self.stock.clear()
        self.acknowledged.clear()
        self.lines.clear()
        self.received.clear()
        self.alone = True
        self.violations.clear()
        self.setup_s, self.seeding = 0.0, False

    def channel(self) -> grpc.Channel:
        """A new channel of the run's connection (the caller closes it)."""
        if self.connection is None:
            raise RuntimeError("the run has no connection to the service (see the error at its start)")
        return self.connection.open()

    def sku(self, name: str) -> str:
        """Scenario SKUs are per run, so a run never meets an earlier run's holds."""
        return f"{self.run}-{name}"

    def seed(self, stock: dict[tuple[str, str], int], send: bool = True) -> None:
        """COUNT facts with fixed event ids: every locust process may seed, duplicates change nothing (E8).
        Not ``send``: only learn the stock (a worker, whose master seeded before spawning it)."""
        self.stock.update(stock)
        if not send:
            return
        now = int(time.time() * 1000) - 5_000
        facts = [pb.Fact(event_id=f"seed-{sku}-{loc}", source="locust", kind=pb.FACT_KIND_COUNT, sku=sku, location=loc,
                         quantity=qty, event_time=timestamp(now)) for (sku, loc), qty in stock.items()]
        with self.channel() as channel:
            stub = _stub(channel)
            for i in range(0, len(facts), SEED_CHUNK):
                stub.RecordEvents(pb.RecordEventsRequest(events=facts[i:i + SEED_CHUNK]), timeout=60)

    def held(self, rid: str, lines: list[tuple[str, str, int]]) -> None:
        """A Reserve acknowledged ``HELD`` with these lines."""
        self.acknowledged[rid] = "HELD"
        self.lines[rid] = lines

    def check(self, environment: Any) -> None:
        with self.channel() as channel:
            stub = _stub(channel)
            try:
                positions = self._check_stock(stub)
                self._check_promised(positions, self._check_reservations(stub))
            except grpc.RpcError as exc:  # what cannot be checked does not pass
                self.violations.append(f"unchecked: the service did not answer the check: {exc.code().name}")
        for violation in self.violations:
            environment.events.request.fire(request_type="invariant", name=f"invariant:{violation.split(':')[0]}",
                                            response_time=0, response_length=0,
                                            exception=AssertionError(violation), context={})
        if self.violations:
            environment.process_exit_code = 1

    def _check_stock(self, stub: Any) -> dict[tuple[str, str], Any]:
        """Every seeded position as the service has it now."""
        keys = list(self.stock)  # every one: the end-of-run line says how many were checked
        positions = {}
        for i in range(0, len(keys), CHECK_KEYS_PER_CALL):
            req = pb.GetAvailabilityRequest(keys=[pb.PositionKey(sku=s, location=loc)
                                                  for s, loc in keys[i:i + CHECK_KEYS_PER_CALL]])
            for p in stub.GetAvailability(req, timeout=30).positions:
                positions[(p.sku, p.location)] = p
                if p.reserved + p.committed > p.on_hand:
                    self.violations.append(f"oversold: {p.sku}@{p.location} reserved {p.reserved} + committed "
                                           f"{p.committed} > on_hand {p.on_hand}")
        return positions

    def _check_promised(self, positions: dict[tuple[str, str], Any], states: dict[str, int]) -> None:
        """R2 by the book: the units acknowledged to this process, as it asked for them, against the units there
        (read before the reservations: holds only end since, so the count is never above what it was then)."""
        holding: Counter[tuple[str, str]] = Counter()
        shipped: Counter[tuple[str, str]] = Counter()
        for rid, state in states.items():
            into = holding if state in _HOLDING else shipped if state == pb.RESERVATION_STATE_FULFILLED else None
            if into is None:  # released or expired: holds nothing
                continue
            for sku, loc, quantity in self.lines.get(rid, ()):
                into[(sku, loc)] += quantity
        for (sku, loc), p in positions.items():
            ever = self.stock[(sku, loc)] + self.received[(sku, loc)]
            if holding[(sku, loc)] > p.on_hand:
                self.violations.append(f"oversold: {sku}@{loc} reservations acknowledged here hold "
                                       f"{holding[(sku, loc)]} > on_hand {p.on_hand}")
            elif self.alone and holding[(sku, loc)] + shipped[(sku, loc)] > ever:
                self.violations.append(f"oversold: {sku}@{loc} reservations acknowledged here hold or shipped "
                                       f"{holding[(sku, loc)] + shipped[(sku, loc)]} > {ever} units ever sent there")

    def _check_reservations(self, stub: Any) -> dict[str, int]:
        """Each acknowledged reservation's state now, checked against what was acknowledged."""
        s = pb.ReservationState
        allowed = {"HELD": {s.RESERVATION_STATE_HELD, s.RESERVATION_STATE_CONFIRMED, s.RESERVATION_STATE_EXPIRED,
                            s.RESERVATION_STATE_RELEASED, s.RESERVATION_STATE_FULFILLED},
                   "CONFIRMED": {s.RESERVATION_STATE_CONFIRMED, s.RESERVATION_STATE_RELEASED,
                                 s.RESERVATION_STATE_FULFILLED},
                   "RELEASED": {pb.RESERVATION_STATE_RELEASED}, "FULFILLED": {pb.RESERVATION_STATE_FULFILLED}}
        # Every one acknowledged (the end-of-run line says how many), CHECK_IN_FLIGHT at a time.
        acknowledged = list(self.acknowledged.items())
        states = {}
        for i in range(0, len(acknowledged), CHECK_IN_FLIGHT):
            reads = [(rid, state, stub.GetReservation.future(pb.GetReservationRequest(reservation_id=rid), timeout=10))
                     for rid, state in acknowledged[i:i + CHECK_IN_FLIGHT]]
            for rid, state, read in reads:
                try:
                    rec = read.result().reservation
                except grpc.RpcError as exc:
                    self.violations.append(f"lost: acknowledged reservation {rid} ({state}): {exc.code().name}")
                    continue
                states[rid] = rec.state
                if rec.state not in allowed[state]:
                    self.violations.append(f"state: {rid} acknowledged {state}, now "
                                           f"{pb.ReservationState.Name(rec.state)}")
        return states


def _stub(channel: grpc.Channel) -> Any:
    from atp_client.pb.atp.v1 import atp_pb2_grpc as pb_grpc

    return pb_grpc.AvailabilityServiceStub(channel)


_HOLDING = (pb.RESERVATION_STATE_HELD, pb.RESERVATION_STATE_CONFIRMED)
BOOK = Book()
