"""Facts stamped in the future or late past the grace window (``--fact-times``).

docs/SEMANTICS.md E7: a fact stamped further ahead of the service clock than ``fact_future_skew_ms`` is
bad input: refused (RecordEvents answers it INVALID, an input stream dead-letters it), never applied;
one within the skew is applied as any other. E6: a fact older than its shard's stream time minus the
grace window is quarantined with its reason, never applied, never dropped silently.

The simulation calls ``FactDesk.record`` for RecordEvents; E7 is judged at the edge (``edge/record.py``):
here ``judged_record`` does what its ``_facts_of`` does with the facts, by the clock of the process the
call reached (``fact`` refuses what is ahead; those go to ``FactDesk.applied_or_refused``, E8 first).

A plain fact is now and then stamped anew from a random stream of its own (seeds without the flag
replay as before), with a fresh identity, margins keeping its class whatever clock judges it (``--clock-skew``):
- within the skew: up to ``fact_future_skew_ms - MARGIN_MS`` ahead: never refused nor late, applied once (it
  joins ``Commands.facts``, resent, tied and contradicted as any other: a conflict sent first quarantines it;
  resent past the grace window, ``--short-grace``, it may be late: ``book``);
- past it: at least ``MARGIN_MS`` beyond: refused (InvalidArgument), never in the log (never resent);
- late: ``MARGIN_MS`` and more before the newest event time of a fact its shard answered APPLIED (durable,
  R7: its shard's stream time is no lower, in the run and in the one-or-three-shard replay, which replays
  that fact's batch earlier) minus the grace: QUARANTINED ``late: ...``, in the quarantine stream, never in
  the log (never resent, nor tied: on another shard it need not be late). Not drawn with ``--lose-tail``
  (Redis may lose what was acknowledged, and stream time with it).
The grace is ``GRACE_MS`` (``sim_config`` otherwise sets its maximum), far more than a seed's clock moves.
A fact stamped past the skew is left out of the batches replayed on one shard and on three (``shardcount``):
the replay judges no clock.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from reservation import DomainError, Fact, FactOutcome, InvalidArgument, Limits
from tests.sim.checks import Violation
from tests.sim.tally import Tally

if TYPE_CHECKING:
    from tests.sim.world import World

GRACE_MS = 3_600_000
"""The grace window with ``--fact-times`` (E6): an hour, which no seed's clock nears."""
MARGIN_MS = 10_000
"""How far from a boundary a stamp is drawn: above the hosts' skew (``skew.SKEW_BOUND_MS``) and any clock
movement between a fact's draw and its judging."""
WITHIN_P, PAST_P, LATE_P = 0.05, 0.05, 0.05
"""Per plain fact: the chance it is stamped within the skew, past it, late past the grace."""


class FactTimes:
    def __init__(self, seed: int, tally: Tally, late: bool = True) -> None:
        self.rng = random.Random(f"fact times {seed}")
        self.tally, self.late = tally, late
        self.kinds: dict[tuple[str, str], str] = {}  # (source, event_id) -> "within", "past", "late"
        self.within: set[Fact] = set()  # stamped within the skew: those facts exactly (not ties or conflicts)
        self.floors: dict[int, int] = {}  # shard -> newest event time of a fact acknowledged APPLIED there
        self.quarantined: set[tuple[str, str]] = set()  # late facts answered QUARANTINED
        self.n = 0

    def restamp(self, fact: Fact, now: int, shard: int, limits: Limits) -> Fact | None:
        """``fact`` stamped within the skew, past it or late (a fresh identity); None: as drawn."""
        roll, skew = self.rng.random(), limits.fact_future_skew_ms
        if roll < WITHIN_P:
            kind, at = "within", now + self.rng.randint(1, skew - MARGIN_MS)
        elif roll < WITHIN_P + PAST_P:
            kind, at = "past", now + skew + MARGIN_MS + self.rng.randint(0, 600_000)
        elif roll < WITHIN_P + PAST_P + LATE_P and self.late and shard in self.floors:
            grace = limits.fact_grace_ms
            kind, at = "late", self.floors[shard] - grace - MARGIN_MS - self.rng.randint(0, grace)
        else:
            return None
        self.n += 1
        event_id = f"t{self.n}"
        self.kinds[(fact.source, event_id)] = kind
        setattr(self.tally, f"fact_{kind}", getattr(self.tally, f"fact_{kind}") + 1)
        odd = Fact(event_id, fact.source, fact.kind, fact.sku, fact.location, fact.quantity, at)
        if kind == "within":
            self.within.add(odd)
        return odd

    def replayed(self, batch: list[Fact]) -> list[Fact]:
        """The batch as the one-or-three-shard replay sends it: without the facts refused by the clock."""
        return [f for f in batch if self.kinds.get((f.source, f.event_id)) != "past"]

    def book(self, batch: Sequence[Fact], results: Sequence[Any], shard_of: Any, now: int, skew_ms: int,
             grace_ms: int) -> None:
        """What each fact of a batch was told: E6/E7 by its class; nothing dropped silently. A fact within the
        skew is never late while stamped no earlier than ``now`` (the clock as the call is answered) plus the
        skew minus ``grace_ms``, the shortest grace of the run (what an instance forgot under it stays late
        after, ``forgotten_before``): stream time is never further ahead of the clock than the skew. Resent
        later (``--short-grace``: a grace of seconds) it may be: forgotten by its shard, or never applied (E6)."""
        fresh = now + skew_ms - grace_ms
        for fact, result in zip(batch, results, strict=True):
            kind = self.kinds.get((fact.source, fact.event_id))
            told = _told(result)
            if isinstance(result, tuple) and result[0] == FactOutcome.QUARANTINED and not result[1]:
                raise Violation(f"E6: {fact} quarantined without a reason")
            if isinstance(result, tuple) and result[0] == FactOutcome.APPLIED:  # its shard's stream time is past it
                shard = shard_of(fact.sku)
                self.floors[shard] = max(self.floors.get(shard, 0), fact.event_time)
            if kind == "past" and not (isinstance(result, DomainError) and
                                       (not isinstance(result, InvalidArgument) or "ahead" in result.message)):
                raise Violation(f"E7: {fact}, stamped past fact_future_skew_ms, was answered {told}")
            # within the skew: never refused nor late (a conflicting twin that came first may quarantine it)
            if fact in self.within and (isinstance(result, InvalidArgument) or
                                        (_late(result) and fact.event_time >= fresh)):
                raise Violation(f"E7: {fact}, stamped within fact_future_skew_ms, was answered {told}")
            if kind == "late" and not (_late(result) or (isinstance(result, DomainError)
                                                         and not isinstance(result, InvalidArgument))):
                raise Violation(f"E6: {fact}, stamped before stream time minus grace, was answered {told}")
            if kind == "late" and _late(result):
                self.quarantined.add((fact.source, fact.event_id))

    def check(self, world: World) -> None:
        """E6/E7: no fact stamped past the skew or late ever applied; a late one answered quarantined is in
        the quarantine stream (never dropped silently)."""
        applied = world.logged_fact_ids()
        for identity, kind in self.kinds.items():
            if kind != "within" and identity in applied:
                raise Violation(f"E{6 if kind == 'late' else 7}: fact {identity} stamped {kind} is in the log, applied")
        streamed = {(f["source"], f["event_id"]) for _, f in world.log.client.entries}
        for identity in self.quarantined - streamed:
            raise Violation(f"E6: late fact {identity} answered QUARANTINED is not in the quarantine stream")


def _late(result: Any) -> bool:
    return isinstance(result, tuple) and result[0] == FactOutcome.QUARANTINED and result[1].startswith("late:")


def _told(result: Any) -> str:
    if isinstance(result, DomainError):
        return f"{type(result).__name__}: {result.message}"
    return f"{FactOutcome(result[0]).name} {result[1]!r}"
