"""What ``membership_fuzz`` sends through the services while ownership meets its faults, and what must
hold of it once they are over:

- receipts: each one acknowledged is counted; each, sent again with its id, is counted once (E8);
- orders of one unit on each of two SKUs (groups apart, most of them: a saga across groups): each one
  acknowledged is found HELD, whole; one in doubt, sent again with its id, ends held or refused (R5);
  the units reserved at each position are exactly those of the orders found held — none held in part,
  none kept by a part whose order is gone (R2) — and nothing is promised beyond what was received.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any

from atp_client import AtpClient
from atp_client._errors import Retryable
from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.edge.test_api import receipt

HELD = pb.RESERVATION_STATE_HELD
LAST_REFUSAL = [""]
"""The last retryable refusal ``_settled`` met (what a check that gave up says)."""
SETTLE_S = 60.0
"""How long a call is tried again while it is refused as retryable once the faults are over (a saga still
driven on, a shard still settling a write that was in doubt): a bound for a broken run only."""


class Unreadable(Exception):
    """A read still refused as retryable ``SETTLE_S`` after the faults ended."""


class Books:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.skus = [f"k{i}" for i in range(24)]
        self.facts: dict[str, tuple[str, int]] = {}  # event id -> (sku, units)
        self.acked_facts: set[str] = set()
        self.orders: dict[str, tuple[str, str]] = {}  # reservation id -> its two SKUs, one unit each
        self.acked_orders: set[str] = set()

    # -- while the faults run -----------------------------------------------------------------------
    async def record(self, client: AtpClient) -> None:
        eid = f"f{len(self.facts)}"
        sku, units = self.rng.choice(self.skus), self.rng.randint(1, 9)
        self.facts[eid] = (sku, units)
        with contextlib.suppress(Exception):  # refused or in doubt: sent again at the end
            (result,) = await client.record_events([receipt(eid, sku, "DC", units)])
            if result.outcome == pb.FACT_OUTCOME_APPLIED:
                self.acked_facts.add(eid)

    async def reserve(self, client: AtpClient) -> None:
        rid = f"r{len(self.orders)}"
        a, b = self.rng.sample(self.skus, 2)
        self.orders[rid] = (a, b)
        with contextlib.suppress(Exception):  # in doubt: sent again at the end
            if (await client.reserve(rid, _lines(a, b), ttl_seconds=3600)).state == HELD:
                self.acked_orders.add(rid)

    # -- once they are over ---------------------------------------------------------------------------
    async def check(self, client: AtpClient) -> list[str]:
        try:
            findings = await self._receipts(client)
            return findings + await self._orders(client)
        except Unreadable as exc:  # liveness: every group answers once the faults are over
            return [str(exc)]

    async def _receipts(self, client: AtpClient) -> list[str]:
        findings = []
        found, acked = await self._positions(client), self._received(self.acked_facts)
        findings += [f"{sku}: {found[sku].on_hand} on hand, below the {units} acknowledged (lost)"
                     for sku, units in acked.items() if found[sku].on_hand < units]
        for eid, (sku, units) in sorted(self.facts.items()):
            results = await _settled(lambda eid=eid, sku=sku, units=units: client.record_events(
                [receipt(eid, sku, "DC", units)]))
            if results is None:
                findings.append(f"{eid} sent again: still refused as retryable after {SETTLE_S:.0f} s")
                continue
            (result,) = results
            if result.outcome not in (pb.FACT_OUTCOME_APPLIED, pb.FACT_OUTCOME_DUPLICATE):
                findings.append(f"{eid} sent again: {pb.FactOutcome.Name(result.outcome)}")
        found, received = await self._positions(client), self._received(self.facts)
        return findings + [f"{sku}: {found[sku].on_hand} on hand, {received.get(sku, 0)} received (E8)"
                           for sku in self.skus if found[sku].on_hand != received.get(sku, 0)]

    async def _orders(self, client: AtpClient) -> list[str]:
        findings, held = [], {}
        for rid, (a, b) in sorted(self.orders.items()):
            reply = await _settled(lambda rid=rid, a=a, b=b: client.reserve(rid, _lines(a, b), ttl_seconds=3600))
            if reply is None:
                findings.append(f"order {rid}: still refused as retryable after {SETTLE_S:.0f} s")
            elif reply.state == HELD:
                held[rid] = (a, b)
            elif rid in self.acked_orders:
                findings.append(f"order {rid}: acknowledged HELD, now {pb.ReservationState.Name(reply.state)} (lost)")
        for rid in sorted(held):
            record = await _settled(lambda rid=rid: client.get_reservation(rid))
            if record is None or record.state != HELD or sorted(line.sku for line in record.lines) != sorted(held[rid]):
                findings.append(f"order {rid}: answered HELD, its record {record}")
        reserved = {sku: 0 for sku in self.skus}
        for a, b in held.values():
            reserved[a] += 1
            reserved[b] += 1
        found = await self._positions(client)
        findings += [f"{sku}: {found[sku].reserved} reserved, {units} by the orders held (a part kept or lost)"
                     for sku, units in reserved.items() if found[sku].reserved != units]
        return findings + [f"{sku}: available {p.available} (oversold)" for sku, p in found.items() if p.available < 0]

    def _received(self, eids: set[str] | dict[str, tuple[str, int]]) -> dict[str, int]:
        totals: dict[str, int] = {}
        for eid in eids:
            sku, units = self.facts[eid]
            totals[sku] = totals.get(sku, 0) + units
        return totals

    async def _positions(self, client: AtpClient) -> dict[str, pb.Availability]:
        positions = await _settled(lambda: client.availability([(sku, "DC") for sku in self.skus]))
        if positions is None:
            raise Unreadable(f"positions unreadable {SETTLE_S:.0f} s after the faults ended: {LAST_REFUSAL[0]}")
        return {p.sku: p for p in positions}


def _lines(a: str, b: str) -> list[tuple[str, str, int]]:
    return [(a, "DC", 1), (b, "DC", 1)]


async def _settled(call: Any) -> Any:
    """``call()``'s answer, tried again while it is refused as retryable; None past ``SETTLE_S``."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        try:
            return await call()
        except Retryable as exc:
            LAST_REFUSAL[0] = str(exc)
        await asyncio.sleep(0.05)
    return None
