"""SHIPMENT facts naming a reservation no group of this process holds (``ownership = leases``; a part of it here or
not): whether one is of an order homed at another process, read from the id's claim (R5, ``engine.ids``), a call's
claims read ahead a batch at a time, and which group's owner to ask for it (R4, Q3: ``parts.shipped_elsewhere``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from atp_service.engine.ids import claim_answer
from atp_service.engine.shipments import Asking
from atp_service.tasks import exception_seen
from reservation import Fact, Unavailable

if TYPE_CHECKING:
    from atp_service.engine.router import Engine

LOOKS_AHEAD = 256
"""The claims a call's SHIPMENT facts name read in one round trip at most (``ClaimsAhead``): a call of 10,000 such
facts reads them in 40 round trips, not 10,000 one after the other, and never in one pipeline of 10,000."""


class ClaimsAhead:
    """The claims (R5) of the reservation ids a call's SHIPMENT facts name and this process does not know, read
    ahead: ``LOOKS_AHEAD`` facts' at most in one round trip (``IdClaims`` sends the looks of one event-loop turn
    together), from the first fact that asks. Read one fact at a time, a WMS replaying a day of shipments of ids
    not known here (orders made before a restore) paid a round trip a fact, in turn, and ingest crawled. A claim
    read ahead is the one a read at its fact's turn finds but where it is made (or expires) meanwhile: as if the
    fact had come a moment earlier. A read that failed is made again from the fact that meets it."""

    def __init__(self, engine: Engine, facts: Sequence[Fact]) -> None:
        self._engine, self._facts = engine, facts  # the call's shipments naming a reservation, in its order
        self._next = 0  # where the next fact asking is looked for in ``_facts``
        self._read: dict[str, asyncio.Future[int]] = {}  # at most one per fact of the call: bounded by it
        self.unanswered: set[str] = set()
        """The processes that did not answer a step of the call's shipments, not asked again in it (``Asking``)."""

    def claim(self, fact: Fact, again: bool = True) -> asyncio.Future[int]:
        """``fact``'s claim: the group it holds, -1 where none (``IdClaims.look``). ``again``: a read ahead that
        failed is made again (else answered as it failed: a fact that can do without it pays no retries)."""
        read = self._read.get(fact.reservation_id)
        if read is None or (again and _failed(read)):
            at = next((n for n in range(self._next, len(self._facts)) if self._facts[n] is fact), None)
            if at is None:  # not among the call's facts (never so): read alone
                return self._looked(fact.reservation_id)
            self._next = at + 1
            for later in self._facts[at:at + LOOKS_AHEAD]:
                rid = later.reservation_id
                if unknown_here(self._engine, later) and ((held := self._read.get(rid)) is None or _failed(held)):
                    self._read[rid] = self._looked(rid)
            read = self._read.get(fact.reservation_id) or self._looked(fact.reservation_id)
        return read

    def _looked(self, reservation_id: str) -> asyncio.Future[int]:
        assert self._engine.ids is not None
        read = self._engine.ids.claims.look(reservation_id)
        read.add_done_callback(exception_seen)  # one read ahead for a fact never asking: no "never retrieved"
        return read


def _failed(read: asyncio.Future[int]) -> bool:
    return read.done() and (read.cancelled() or read.exception() is not None)


def unknown_here(engine: Engine, fact: Fact) -> bool:
    """Whether a SHIPMENT ``fact`` names a reservation no group here holds (a part of it at its shard or not): its
    claim says where its order is homed (``homed_elsewhere``)."""
    shard, rid = engine.place(fact.sku), fact.reservation_id
    return engine.home_of(rid) is None and not engine.actors[shard].vacant and engine.orders is not None


async def homed_elsewhere(engine: Engine, fact: Fact, shard: int, claims: ClaimsAhead | None = None
                          ) -> Asking | None:
    """Where a SHIPMENT ``fact`` at ``shard`` naming a reservation no group here holds is of an order homed at another
    process, whom to ask for it; else None. Its claim (R5) names the one group its record is in, a group another
    process serves: that group's owner alone is asked (``parts.shipped_elsewhere``), not every other process twice a
    fact. A part of it here: asked so where its claim names such a group, else (none read: Redis lost it, or did not
    answer) every other process, as before (group -1). No part of it here and its claim naming such a group: an order
    spanning groups homed there whose part here Redis lost (R7: this group back from older data) — its home makes the
    part again before the shipment fulfils it (R4, Q3); UNAVAILABLE (nothing decided) where Redis did not answer; None
    with no claims (one process) or none for the id (E8: decided once, as unknown). ``claims``: the call's claims read
    ahead."""
    orders_, rid, unanswered = engine.orders, fact.reservation_id, None if claims is None else claims.unanswered
    if orders_ is None or engine.remote is None:
        return None
    part_here = orders_.has_part(shard, rid)
    if engine.ids is None:
        return Asking(-1, unanswered) if part_here else None
    read = claims.claim(fact, again=not part_here) if claims is not None else engine.ids.claims.look(rid)
    if part_here:
        try:
            home = await claim_answer(read)
        except Unavailable:  # its claim not read: the order's home asked of every other process, as before
            home = -1
    else:
        home = await claim_answer(read)
    elsewhere = 0 <= home < len(engine.actors) and home != shard and engine.actors[home].vacant
    return Asking(home, unanswered) if elsewhere else Asking(-1, unanswered) if part_here else None
