"""Fact intake shared by RecordEvents and the Redis input streams (E1-E9, R4 through SHIPMENT).

Facts are grouped by shard and applied in one actor message per shard; each is
durable in its shard log before this returns. Quarantined facts are also written
to the quarantine stream, with their reason, before they are acknowledged (E6):
a late fact is never dropped silently.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from atp_service.engine.claims_ahead import ClaimsAhead, homed_elsewhere
from atp_service.engine.parts import lasting
from atp_service.engine.router import Engine
from atp_service.engine.shipments import refused_for_good, unfulfilled
from atp_service.intake.duplicates import counts_durable, duplicates_durable, told_first
from atp_service.intake.quarantine import Acks, QuarantineStream
from atp_service.logs import EveryInterval
from atp_service.metrics import IntakeMetrics
from atp_service.tasks import exception_seen, keep
from reservation import (
    CountRows,
    DomainError,
    Fact,
    FactKind,
    FactOutcome,
    Ledger,
    LineRequest,
    Moved,
    Unavailable,
    View,
)
from reservation import _operations as ops
from reservation._bulk import Outcomes
from reservation._dedupe import digest
from reservation._keys import fact_payload
from reservation._limits import CAPACITY_QUARANTINE, DEDUPE_LIMIT, POSITIONS_LIMIT
from reservation._order_shipments import earlier_holder
from reservation._unfulfilled import NotFulfilled, Unfulfilled, fulfilment_refused

Result = tuple[FactOutcome, str]
_KIND_NAMES = {k.value: k.name for k in FactKind}
_OUTCOME_NAMES = {o: o.name.lower() for o in FactOutcome}
LAG_SAMPLES = 100
UNFULFILLED_LOG_EVERY_S = 1.0
"""At most one ``shipment_not_fulfilled`` line this often, the next saying in ``left_out`` how many were
left out: an ingest caller sends up to ``max_events_per_call`` facts a call, and any producer writes the
input streams at will, each SHIPMENT naming a reservation that is not there (a WMS shipping before it
confirms) a WARNING line of its own, which buried everything else. ``atp_shipments_unfulfilled_total``
has every one."""
log = logging.getLogger(__name__)
T = TypeVar("T")


class FactDesk:
    def __init__(self, engine: Engine, quarantine_stream: str, stream_maxlen: int,
                 metrics: IntakeMetrics | None = None) -> None:
        self.engine = engine
        self.metrics = metrics or IntakeMetrics()
        self.quarantine = QuarantineStream(quarantine_stream, stream_maxlen)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.unfulfilled_lines = EveryInterval(UNFULFILLED_LOG_EVERY_S)
        """The ``shipment_not_fulfilled`` lines, at most one per ``UNFULFILLED_LOG_EVERY_S``."""

    async def record(self, facts: Sequence[Fact], origin: str, acks: Acks | None = None,
                     sender_writes: bool = False) -> list[Result | DomainError]:
        """``_record`` in a task of the desk's own: a caller that gives up (deadline, disconnect)
        abandons the wait, not the work — facts its shards applied are still written to the
        quarantine stream and counted (E6, R8). ``acks``: the facts' input entries, those of the facts
        quarantined acknowledged with their quarantine entries (``QuarantineStream``: their decision stands).
        ``sender_writes``: the facts quarantined are neither written nor counted here — the process that read
        them from an input stream does both, with their entries' acknowledgements (``quarantined_there``)."""
        return await self._owned(self._record(facts, origin, acks, sender_writes))

    async def quarantined_there(self, facts: Sequence[Fact], results: list[Result | DomainError], at: Sequence[int],
                                acks: Acks) -> None:
        """The facts at ``at`` that their groups' owners answered QUARANTINED, sent saying this process writes
        them (``owners.SENDER_WRITES_KEY``): written to the quarantine stream here, each with its input
        entry's acknowledgement in one script, and counted (E6; E8: once the stream shows it, its entry is never
        read again). An owner of an earlier version wrote it too: the digest makes this write a duplicate."""
        late = [i for i in at if isinstance(result := results[i], tuple) and result[0] == FactOutcome.QUARANTINED]
        if late:
            await self._owned(self.quarantine.settle(self.engine.log_writer, facts, results, late, acks, self.metrics))

    async def load_counts(self, block: CountRows, origin: str) -> tuple[Outcomes, dict[int, str]]:
        """``LoadCounts``: the block's rows by shard, one actor message each (``Ledger.load_counts``);
        each row's outcome and the reasons of those quarantined. Raises the first refusal of a part
        (``load_part``: what the other parts loaded stays loaded)."""
        outcomes, reasons, refused = await self.load_part(block, origin)
        if refused is not None:
            raise refused
        return outcomes, reasons

    async def load_part(self, block: CountRows, origin: str) -> tuple[Outcomes, dict[int, str], DomainError | None]:
        """``load_counts`` telling what was loaded when a part is refused: each row's outcome (0: not
        loaded, its shard refused it or the quarantine stream did not take it), the quarantined rows'
        reasons, and the refusal of a shard's part (``told_first``; None: none). Raises a refusal given before
        any shard loaded (``make_room``). Owned like ``record`` (R8)."""
        return await self._owned(self._load_counts(block, origin))

    def make_room(self, block: CountRows) -> None:
        """Raises CAPACITY_REACHED now when the block's rows held here would pass
        ``max_positions_per_shard``: checked before any part of a call goes to another process."""
        self._make_room(self._parts(block))

    async def _owned(self, work: Coroutine[Any, Any, T]) -> T:
        """``work`` in a task of the desk's own, which ``stop`` waits for; the caller waits shielded."""
        task = keep(self._tasks, work)
        task.add_done_callback(exception_seen)
        return await asyncio.shield(task)

    async def _load_counts(self, block: CountRows, origin: str) -> tuple[Outcomes, dict[int, str], DomainError | None]:
        parts = self._parts(block)
        self._make_room(parts)
        outcomes, reasons, refused = await self._load_by_shard(block, parts)
        refused = await counts_durable(self.engine, parts, outcomes, refused)  # R7: as ``_record``'s duplicates
        if refused is not None:
            self.engine.count_capacity_refusal(refused)
        again = 0
        if reasons:
            self._count_no_room(reasons.values())
            late = sorted(reasons)
            facts = [block.fact(i) for i in late]
            results: list[Result | DomainError] = [(FactOutcome.QUARANTINED, reasons[i]) for i in late]
            again = len(await self.quarantine.settle(self.engine.log_writer, facts, results, list(range(len(late)))))
            failed = next((r for r in results if isinstance(r, DomainError)), None)
            if failed is not None:  # not acknowledged, as RecordEvents answers them: a retry quarantines
                # them again and streams them (E6), so the caller is told them not loaded (0), not quarantined
                refused, reasons = told_first(refused, failed), {}
                outcomes[late] = 0
        counted = np.bincount(outcomes, minlength=len(FactOutcome) + 1)
        counted[FactOutcome.QUARANTINED] -= again
        counted[FactOutcome.DUPLICATE] += again  # quarantined before (a retry): counted once (E8)
        for outcome in FactOutcome:
            if counted[outcome]:
                self.metrics.facts.labels(origin, "COUNT", _OUTCOME_NAMES[outcome]).inc(int(counted[outcome]))
        if counted[0]:  # rows whose shard refused them or the stream did not take, as RecordEvents counts them
            self.metrics.facts.labels(origin, "COUNT", "unavailable").inc(int(counted[0]))
        return outcomes, reasons, refused

    def _count_no_room(self, reasons: Iterable[str]) -> None:
        """Facts quarantined for want of room at a shard's bound, by that limit (a new position past
        ``max_positions_per_shard``, a new identity past ``max_dedupe_entries_per_shard``): the
        capacity alerts read ``atp_capacity_refusals_total``."""
        limits = collections.Counter(DEDUPE_LIMIT if DEDUPE_LIMIT in reason else POSITIONS_LIMIT
                                     for reason in reasons if reason.startswith(CAPACITY_QUARANTINE))
        for limit, n in limits.items():
            self.engine.metrics.capacity_refusals.labels(limit).inc(n)

    def _parts(self, block: CountRows) -> list[tuple[int, npt.NDArray[np.intp], CountRows]]:
        """The block's rows by shard: (shard, the rows' indices in the block, the rows)."""
        shard_of_sku = np.array([self.engine.place(sku) for sku in block.skus], dtype=np.intp)
        shard_of_row = shard_of_sku[block.sku_index] if len(block) else np.zeros(0, dtype=np.intp)
        parts: list[tuple[int, npt.NDArray[np.intp], CountRows]] = []
        for shard in np.unique(shard_of_row).tolist():
            rows = np.flatnonzero(shard_of_row == shard)
            parts.append((shard, rows, CountRows(block.source, block.skus, block.locations, block.sku_index[rows],
                                                 block.location_index[rows], block.quantity[rows], block.at[rows])))
        return parts

    def _make_room(self, parts: list[tuple[int, npt.NDArray[np.intp], CountRows]]) -> None:
        """CAPACITY_REACHED before any shard loads its part when one part's new positions would pass
        ``max_positions_per_shard``: the call is refused whole, not half-applied. Each shard checks
        again in its turn (``Ledger.load_counts``): only positions made between the two by other
        calls can leave the other shards' parts applied and this one refused (a retry is safe, E8)."""
        for shard, _, part in parts:
            try:
                actor = self.engine.local(shard)
            except Moved:
                continue  # refused Moved by its submit, as before
            refusal = actor.room_refusal(part)
            if refusal is not None:
                self.engine.count_capacity_refusal(refusal)
                raise refusal

    async def _load_by_shard(self, block: CountRows, parts: list[tuple[int, npt.NDArray[np.intp], CountRows]],
                             ) -> tuple[Outcomes, dict[int, str], DomainError | None]:
        """Each row's outcome (0: its shard refused it), the quarantined rows' reasons, and the refusal
        told (``told_first``). Every shard that takes its part is waited for: a refusal refuses the call (a retry
        is safe, E8), but only once the other shards' quarantined rows can be streamed (E6)."""
        outcomes = np.zeros(len(block), dtype=np.uint8)
        reasons: dict[int, str] = {}
        waits = []
        refused: DomainError | None = None
        for shard, rows, part in parts:
            try:
                reply = self.engine.actors[shard].submit(_load_all(part))
            except DomainError as exc:
                refused = told_first(refused, exc)
                continue
            reply.add_done_callback(exception_seen)
            waits.append((rows, reply))
        for rows, reply in waits:
            try:
                part_outcomes, part_reasons = await reply
            except DomainError as exc:
                refused = told_first(refused, exc)
                continue
            outcomes[rows] = part_outcomes
            reasons.update((int(rows[j]), reason) for j, reason in part_reasons.items())
        return outcomes, reasons, refused

    async def wrote_owed(self) -> bool:
        """``QuarantineStream.write_owed``, before their input entries are read again (E8); False: no answer."""
        return not self.quarantine.owed or await self.quarantine.write_owed(self.engine.log_writer, self.metrics)

    async def stop(self, bound_s: float) -> None:
        """Wait (at most ``bound_s``) for the work of callers that gave up; the shards still run."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=bound_s)

    async def _record(self, facts: Sequence[Fact], origin: str, acks: Acks | None,
                      sender_writes: bool) -> list[Result | DomainError]:
        """Apply facts; one result per fact, or the error that kept it from being durable."""
        out: list[Result | DomainError] = [Unavailable("not decided")] * len(facts)
        shipments = await self._apply_in_order(facts, out)
        await duplicates_durable(self.engine, facts, out)  # R7: answered from memory, checked against Redis
        late = [i for i, r in enumerate(out) if type(r) is tuple and r[0] == FactOutcome.QUARANTINED]
        again: set[int] = set()
        if late:
            self._count_no_room(str(out[i][1]) for i in late)  # type: ignore[index]
            if not sender_writes:
                again = await self.quarantine.settle(self.engine.log_writer, facts, out, late, acks)
        self._observe(facts, out, origin, again, set(late) if sender_writes else set())
        self._tell_unfulfilled(facts, out, shipments, origin)
        return out

    async def _apply_in_order(self, facts: Sequence[Fact], out: list[Result | DomainError]) -> list[int]:
        """The facts decided in the call's order at each shard, as one by one (E8: of two sharing an identity the
        first is applied; E6: each sees the stream time the facts before it left): a SHIPMENT naming a reservation
        goes on its own, once the facts of its shard before it are applied. Returns the shipments' indexes."""
        def apply(runs: dict[int, list[int]]) -> Awaitable[None]:
            return self.engine.gather_by_shard({shard: run for shard, run in runs.items() if run},
                                               lambda idx: _apply_all([facts[i] for i in idx]), out)

        since: dict[int, list[int]] = {}  # per shard, its facts since its last shipment (or the call's start)
        first: dict[int, list[int]] = {}  # per shard with shipments, its facts before the first
        steps: list[tuple[int, int, list[int]]] = []  # per shipment: its index, shard, its shard's facts before it
        for i, fact in enumerate(facts):
            shard = self.engine.place(fact.sku)
            if fact.kind == FactKind.SHIPMENT and fact.reservation_id:
                run = since.pop(shard, [])
                if shard not in first:
                    first[shard], run = run, []
                steps.append((i, shard, run))
            else:
                since.setdefault(shard, []).append(i)
        await apply(first | {shard: run for shard, run in since.items() if shard not in first})
        claims = ClaimsAhead(self.engine, [facts[i] for i, _, _ in steps])  # R5: read a batch at a time, not each
        for i, shard, run in steps:
            await apply({shard: run})
            try:
                out[i] = await self._shipment(facts[i], claims)
            except DomainError as exc:
                out[i] = exc
        await apply({shard: run for shard, run in since.items() if shard in first})
        return [i for i, _, _ in steps]

    async def applied_or_refused(self, facts: Sequence[Fact], refusals: Sequence[DomainError],
                                 origin: str = "stream") -> list[Result | DomainError]:
        """Facts refused as stamped in the future (E7): each DUPLICATE where its shard applied it already
        (E8: by a process whose clock ran ahead), else its refusal; ``Moved`` where its group is not here."""
        seen: list[bool | DomainError] = [Unavailable("not decided")] * len(facts)
        by_shard: dict[int, list[int]] = {}
        for i, fact in enumerate(facts):
            by_shard.setdefault(self.engine.place(fact.sku), []).append(i)
        await self.engine.gather_by_shard(by_shard, lambda idx: _applied([facts[i] for i in idx]), seen)
        out: list[Result | DomainError] = [(FactOutcome.DUPLICATE, "") if applied is True else refusal if applied is
                                           False else applied for applied, refusal in zip(seen, refusals, strict=True)]
        await duplicates_durable(self.engine, facts, out)  # R7: answered from memory, checked against Redis
        for fact, applied, result in zip(facts, seen, out, strict=True):
            if applied is not False:  # those refused are counted as such by the caller (invalid, dead-lettered)
                # As ``_observe``: one sent on to its group's owner counts ``moved`` here, judged there.
                outcome = "duplicate" if type(result) is tuple else _refusal_name(result)  # type: ignore[arg-type]
                self.metrics.facts.labels(origin, _KIND_NAMES[fact.kind], outcome).inc()
        return out

    def _tell_unfulfilled(self, facts: Sequence[Fact], results: list[Result | DomainError], shipments: list[int],
                          origin: str) -> None:
        """A shipment that moved stock but fulfilled nothing leaves its reservation's units counted
        twice (gone from on_hand, still reserved or committed; committed never expires, Q3): an input
        stream's caller reads no answer, so it is counted and logged, never only said in a reply."""
        for i in shipments:
            result = results[i]
            if type(result) is tuple and isinstance(result[1], NotFulfilled):
                fact, cause = facts[i], result[1].cause.value  # the label and the line say the same (R4)
                self.metrics.shipments_unfulfilled.labels(origin, cause).inc()
                fields = self.unfulfilled_lines.fields(
                    event="shipment_not_fulfilled", reservation_id=fact.reservation_id, event_id=fact.event_id,
                    source=fact.source, origin=origin, reason=cause)
                if fields is None:  # counted above; its line left out (said by the next one written)
                    continue
                log.warning("shipment %s of %s (%s@%s) fulfilled nothing of reservation %r: %s", fact.event_id,
                            fact.source, fact.sku, fact.location, fact.reservation_id, result[1], extra=fields)

    async def _shipment(self, fact: Fact, claims: ClaimsAhead | None = None) -> Result:
        """R4 through a fact: the units leave on_hand as any SHIPMENT, and the named reservation's
        committed units at that position are fulfilled with them. Idempotent by the fact's id."""
        engine = self.engine
        sku_shard = engine.place(fact.sku)
        engine.local(sku_shard)  # Moved: the fact goes to the process owning its SKU's group
        home = engine.home_of(fact.reservation_id)
        if home is None and (held := await homed_elsewhere(engine, fact, sku_shard, claims)) is not None:
            # A part of an order homed at another process (or one Redis lost here, made again there first: R4, Q3):
            # fulfilled here, its order resolved there (asked of its claim's group's owner alone, where read: R5, R8).
            return await engine.orders.shipment(fact, fact.reservation_id, held)  # type: ignore[union-attr]
        if engine.orders is not None and home is not None:  # on a cluster: one group per step
            if engine.is_order(home, fact.reservation_id):
                return await engine.orders.shipment(fact, fact.reservation_id)
            if home != sku_shard:  # an ordinary reservation has every line on its own shard: not this one
                why = NotFulfilled(Unfulfilled.NOT_A_LINE, f"{fact.sku}@{fact.location} is not a line of "
                                   f"reservation {fact.reservation_id!r}")
                moved: Result = await engine.run({sku_shard}, sku_shard, unfulfilled(fact, why))
                return moved

        def work(view: View, now: int) -> Result:
            outcome, reason = view.record_fact(fact)  # on the fact's shard, held with the record's
            if outcome not in (FactOutcome.APPLIED, FactOutcome.ABSORBED):
                return outcome, reason
            if home is None:  # ABSORBED too: the units left (a later count holds them gone, E4), nothing fulfilled (R4)
                return outcome, NotFulfilled(Unfulfilled.UNKNOWN, f"reservation {fact.reservation_id!r} unknown")
            if why := earlier_holder(view.reservation(fact.reservation_id), fact, engine.limits):
                return outcome, NotFulfilled(Unfulfilled.EARLIER_HOLDER, why)  # R4: not its holder's; stock moved (Q1)
            line = (LineRequest(fact.sku, fact.location, fact.quantity),)
            try:
                # Once: a resend is a duplicate (E8, per position: the lines of one shipment sharing an
                # id each fulfil their own), so no operation counts against max_ops_per_reservation.
                ops.fulfill_committed(view, fact.reservation_id, line, now, engine.limits)
            except DomainError as exc:
                return outcome, fulfilment_refused(exc)
            return outcome, ""

        if home is None:
            result: Result = await engine.run({sku_shard}, sku_shard, work)
            return result
        try:  # every shard of the reservation's lines too: fulfilling may first expire it (R3)
            result = await engine.run_on_record(fact.reservation_id, work, also=(sku_shard,))
        except DomainError as exc:  # refused for good before anything was decided (INTERNAL: a plain reservation
            if not lasting(exc):  # across shards under leases): the units left all the same (Q1, R4)
                raise
            why = refused_for_good(fact.reservation_id, exc)
            result = await engine.run({sku_shard}, sku_shard, unfulfilled(fact, why))
        return result

    def _observe(self, facts: Sequence[Fact], results: list[Result | DomainError], origin: str,
                 again: set[int], theirs: set[int]) -> None:
        """Counters exactly, per (kind, outcome) group; the lag histogram from an even sample of at
        most LAG_SAMPLES applied facts per call, which keeps its cost flat for 10,000-fact batches.
        A fact quarantined before (``again``) counts as a duplicate: each fact counts quarantined once;
        one its sender writes to the quarantine stream (``theirs``) is counted there."""
        counts: dict[tuple[int, str], int] = {}
        applied: list[int] = []
        applied_outcome = FactOutcome.APPLIED
        for n, (fact, r) in enumerate(zip(facts, results, strict=True)):
            if type(r) is tuple and r[0] is applied_outcome:
                applied.append(fact.event_time)
                key = (fact.kind, "applied")
            elif theirs and n in theirs:
                continue
            elif again and n in again:
                key = (fact.kind, "duplicate")
            else:
                key = (fact.kind, _refusal_name(r) if isinstance(r, DomainError) else _OUTCOME_NAMES[r[0]])
            counts[key] = counts.get(key, 0) + 1
        for (kind, outcome), n in counts.items():
            self.metrics.facts.labels(origin, _KIND_NAMES.get(kind, "?"), outcome).inc(n)
        now_ms = time.time() * 1000
        for event_time in applied[:: max(1, len(applied) // LAG_SAMPLES)]:
            self.metrics.fact_lag.observe(max(0.0, (now_ms - event_time) / 1000))


def _refusal_name(error: DomainError) -> str:
    """A fact's ``atp_facts_total`` outcome when it was not applied here: ``moved`` when it goes on
    to the process owning its group (which counts it as it applies it), else ``unavailable``."""
    return "moved" if isinstance(error, Moved) and error.owner else "unavailable"


def _load_all(part: CountRows) -> Callable[[Ledger, int], tuple[Outcomes, dict[int, str]]]:
    return lambda ledger, _now: ledger.load_counts(part)


def _applied(batch: list[Fact]) -> Callable[[Ledger, int], list[bool]]:
    """Whether each fact's identity was applied with its payload (E8), deciding nothing."""
    return lambda ledger, _now: [ledger.memory.payload(digest(f.source, f.event_id, f.sku, f.location), f.source,
                                                       f.event_id, f.sku, f.location) == fact_payload(f)
                                 for f in batch]


def _apply_all(batch: list[Fact]) -> Callable[[Ledger, int], list[Result]]:
    return lambda ledger, _now: [ledger.record_fact(fact) for fact in batch]
