"""A grace window of seconds (``--short-grace``): forgetting (E8), sealing and freeing kept deltas (E9) under
every fault of the simulation.

With the grace the other modes run (an hour, or ten years) a seed's clock, a few minutes, never moves the
late horizon past a fact, and the open map of remembered identities never reaches ``_dedupe.SEAL_AT``: no
shard ever forgets an identity, seals its open map or frees a kept delta, and no snapshot holds a
``forgotten_before``. Here the grace is ``GRACE_MS`` (a seed's clock moves it a few times over) and the open
map is sealed at ``SEAL_AT`` identities, so that maintenance turns (the driver's, and a quiesce's) forget,
seal and free while appends fail, shards crash and recover from snapshots, Redis loses a tail.

The workload stays what it is, stamped closer to the clock so that no fact's first send is late on one
layout and not on another (E1/E8 alike on one shard and on three, ``shardcount``: each shard keeps its own
stream time, E6): a fact is stamped at most ``SPREAD_MS`` before the clock, and no later than
``fact_future_skew_ms - facttimes.MARGIN_MS`` after it (``--fact-times``' "within" facts; ``SKEW_MS`` here);
stream time is never further ahead of the clock than that, so with ``SPREAD_MS`` + that below ``GRACE_MS``
no such fact is late anywhere. A tie takes an earlier fact's time (and maybe its id) only from a fact stamped
inside that spread. Resends (duplicates, conflicts, a LoadCounts' earlier counts) keep their first time:
the older ones, past the horizon, are forgotten by the live shard or not (a replay, a shard restored from a
snapshot older than its forgetting) — a duplicate then, or late: never applied twice (``checks``' E8), the
answer alike on one shard and three (neither forgets there). ``fact_late`` facts (``--fact-times``) are
stamped past the grace as before.

With one process each instance starts with a grace of its own (``Graces``): one with a longer grace than the
instance before restores from a snapshot what that one forgot, inside its own window (``forgotten_before``).

``engaged`` sets the seal threshold for the run and counts what maintenance did (``Tally``: forgetting
passes, identities forgotten, seals, kept deltas freed), putting both back after.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from atp_service.config import ServiceConfig
from reservation import Fact, FactOutcome, Ledger, _dedupe
from reservation._dedupe import FactMemory
from reservation._facts import Histories
from tests.sim.tally import Tally

GRACE_MS = 30_000
"""E6's window with ``--short-grace``: a seed's clock (~2.5 min) moves past it several times; forgetting
passes come every sixteenth of it (``Upkeep._pass_every``)."""
SKEW_MS = 20_000
"""``fact_future_skew_ms`` with ``--short-grace``: "within" facts of ``--fact-times`` at most 10 s ahead."""
SPREAD_MS = 15_000
"""How far before the clock a fact's first send is stamped (120 s in the other modes): with the 10 s a
"within" fact may lead the clock, 25 s, below ``GRACE_MS`` — no first send is late on any layout."""
SEAL_AT = 8
"""The open map's seal threshold for the run (``_dedupe.SEAL_AT``, 16,384 in the service): a shard
remembers a few dozen identities in a seed."""
DEFAULT_SPREAD_MS = 120_000
GRACES_MS = (GRACE_MS, 2 * GRACE_MS, 4 * GRACE_MS)
"""With one process, each instance's grace, drawn (``Graces``): never below ``GRACE_MS``, which the first sends'
stamps and the one-or-three-shard replay assume."""


class Stamps:
    """Event times of first sends: the spread before the clock, and which earlier facts a tie may take; and
    the resends older than the grace window counted by their answers."""

    def __init__(self, spread_ms: int = DEFAULT_SPREAD_MS, grace_ms: int | None = None) -> None:
        self.spread_ms, self.grace_ms = spread_ms, grace_ms

    def before(self, now: int, drawn: int) -> int:
        """A time ``drawn`` ms (0-120 s, as every mode draws it) before ``now``, scaled into the spread."""
        return now - drawn * self.spread_ms // DEFAULT_SPREAD_MS

    def may_tie(self, now: int, event_time: int) -> bool:
        """Whether a first send may take ``event_time`` of an earlier fact (its own identity's first time)."""
        return self.spread_ms == DEFAULT_SPREAD_MS or event_time >= now - self.spread_ms

    def book_resend(self, fact: Fact, result: Any, acked: set[tuple[str, str]], tally: Tally, now: int) -> None:
        """``tally``'s count of old resends: stamped before ``now`` minus grace and answered DUPLICATE (its shard
        remembers it still), or answered late once applied (its shard forgot it, E6 before E8's memory)."""
        if self.grace_ms is None or not isinstance(result, tuple):
            return
        if result[0] == FactOutcome.DUPLICATE and fact.event_time < now - self.grace_ms:
            tally.old_known += 1
        elif result[0] == FactOutcome.QUARANTINED and result[1].startswith("late:") and \
                (fact.source, fact.event_id) in acked:
            tally.old_late += 1


class Graces:
    """One process: each instance started with a grace of its own (``GRACES_MS``), so that one started with a
    longer grace than the instance before it restores what that one forgot inside its own, longer window:
    ``forgotten_before`` (from the snapshot) keeps those late, E6, or a resend of one applied twice (E8)."""

    def __init__(self, seed: int, tally: Tally) -> None:
        self.rng, self.tally = random.Random(f"graces {seed}"), tally
        self.grace_ms = GRACE_MS

    def next_instance(self, config: ServiceConfig) -> ServiceConfig:
        grace = self.rng.choice(GRACES_MS)
        self.tally.graces_grown += grace > self.grace_ms
        self.grace_ms = grace
        return dataclasses.replace(config, limits=dataclasses.replace(config.limits, fact_grace_ms=grace))

    def started(self, ledgers: Iterable[Ledger]) -> None:
        """``tally``: the shards started where what an earlier instance forgot is inside this one's window."""
        self.tally.forgotten_inside += sum(
            ledger.forgotten_before > ledger.stream_time - ledger.limits.fact_grace_ms for ledger in ledgers)


@contextmanager
def engaged(tally: Tally) -> Iterator[None]:
    """``SEAL_AT`` for the run; each forgetting pass, seal and sweep counted in ``tally``."""
    forget_old, seal, sweep, seal_at = FactMemory.forget_old, FactMemory._seal, Histories.sweep, _dedupe.SEAL_AT

    def counted_forget(memory: FactMemory, horizon: int, every: int) -> int:
        gone = forget_old(memory, horizon, every)
        tally.forgets += gone > 0
        tally.forgotten += gone
        return gone

    def counted_seal(memory: FactMemory) -> None:
        tally.seals += 1
        tally.sealed += len(memory.open)
        seal(memory)

    def counted_sweep(histories: Histories, horizon: int, limit: int, every: int) -> int:
        kept = len(histories.pool)
        looked = sweep(histories, horizon, limit, every)
        tally.freed += kept - len(histories.pool)
        return looked

    patches: list[tuple[type, str, Callable[..., Any], Callable[..., Any]]] = [
        (FactMemory, "forget_old", counted_forget, forget_old), (FactMemory, "_seal", counted_seal, seal),
        (Histories, "sweep", counted_sweep, sweep)]
    _dedupe.SEAL_AT = SEAL_AT
    for owner, name, counted, _ in patches:
        setattr(owner, name, counted)
    try:
        yield
    finally:
        _dedupe.SEAL_AT = seal_at
        for owner, name, _, original in patches:
            setattr(owner, name, original)
