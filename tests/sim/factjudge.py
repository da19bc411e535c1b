"""RecordEvents judging E7 as the edge does (``edge/record.py``), for ``--fact-times`` (``facttimes.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from atp_service.intake.facts import FactDesk
from reservation import DomainError, Fact, InvalidArgument, Limits
from reservation import fact as make_fact


async def judged_record(desk: FactDesk, now: int, limits: Limits, facts: Sequence[Fact],
                        origin: str = "sim") -> list[Any]:
    """``edge.record.record_events`` with the facts: those stamped ahead of ``now`` past the skew (E7,
    ``reservation.fact``) go to ``applied_or_refused`` (a DUPLICATE where applied already, else refused),
    the others to ``record``; each answer at its fact's place."""
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
    for n, result in zip(valid, await desk.record([facts[n] for n in valid], origin), strict=True):
        out[n] = result
    if ahead:
        judged = await desk.applied_or_refused([facts[n] for n, _ in ahead], [r for _, r in ahead], origin)
        for (n, _), result in zip(ahead, judged, strict=True):
            out[n] = result
    return out
