"""RecordEvents judging E7 as the edge does (``edge/record.py``), for ``--fact-times`` (``facttimes.py``) and the
input streams' sends to owners (``inputreaders``, ``inputcluster``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from atp_service.edge.record import _in_entry_terms
from atp_service.intake.facts import FactDesk
from reservation import DomainError, Fact, InvalidArgument, Limits
from reservation import fact as make_fact


async def judged_record(desk: FactDesk, now: int, limits: Limits, facts: Sequence[Fact],
                        origin: str = "sim", sender_writes: bool = False) -> list[Any]:
    """``edge.record.record_events`` with the facts: those stamped ahead of ``now`` past the skew (E7,
    ``reservation.fact``) go to ``applied_or_refused`` (a DUPLICATE where applied already, else refused),
    the others to ``record``; each answer at its fact's place. ``sender_writes``: a call forwarded from an input
    stream's reader, which writes what is quarantined (``FactDesk.record``)."""
    valid: list[int] = []
    ahead: list[tuple[int, DomainError]] = []
    for n, f in enumerate(facts):
        try:
            make_fact(f.event_id, f.source, int(f.kind), f.sku, f.location, f.quantity, f.event_time,
                      f.reservation_id, now, limits)
            valid.append(n)
        except InvalidArgument as exc:
            ahead.append((n, exc))
    out: list[Any] = [None] * len(facts)
    recorded = await desk.record([facts[n] for n in valid], origin, sender_writes=sender_writes)
    for n, result in zip(valid, recorded, strict=True):
        out[n] = result
    if ahead:
        judged = await desk.applied_or_refused([facts[n] for n, _ in ahead], [r for _, r in ahead], origin)
        for (n, _), result in zip(ahead, judged, strict=True):
            out[n] = result
    return out


async def judged_sent(desk: FactDesk, now: int, limits: Limits, facts: Sequence[Fact]) -> list[Any]:
    """``RecordEvents`` as an input stream's reader sends it to the facts' owner (``edge.record.fact_sender``): judged
    by the owner's clock (``now``), the sender writing what is quarantined, a refusal named in the entry's terms
    (``_in_entry_terms``: its dead letter's ``_field`` ``event_time_ms``)."""
    return [_in_entry_terms(result) for result in await judged_record(desk, now, limits, facts, "grpc", True)]
