"""R5, E8, E10: a ledger restored from its snapshot answers every later command as the ledger it was taken from.

A seeded history drives one ledger through facts of every kind (resent alike, resent with another payload,
late, counts older and newer than the latest), LoadCounts blocks, Reserves (ids retried with the same and
with other content, refused for stock, partial), Confirm, Release and Fulfil whole and by operation, holds
expiring as the clock moves, and maintenance passes (facts forgotten, kept deltas freed, stale expiry
entries swept, resolved reservations past retention forgotten). At a point of the history the snapshot is
taken, encoded and decoded as Redis stores it, and restored; from there both ledgers are given the same
commands and asked the same: every answer (outcome, refusal and its text), every position's quantities and
history, every record, after every step.

After the cut only the sweep of stale expiry entries and the eviction of resolved reservations run: when
facts are forgotten and deltas freed is the cadence of each ledger's own passes (a sixteenth of grace apart,
``Upkeep._pass_every``), which a snapshot does not carry by design — a restored ledger's first pass forgets
at once what the live one would at its next, every identity it drops stamped outside the grace window (E8
covers the window only). Before the cut they run too: the snapshot carries what they left.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
import numpy as np
import pytest

from reservation import (
    DomainError,
    Fact,
    Ledger,
    LedgerSnapshot,
    Limits,
    LineRequest,
    confirm,
    count_rows,
    expire,
    fulfill,
    release,
    reserve,
    reserve_command,
)

LIMITS = Limits(fact_grace_ms=1_000, retention_ms=3_000)
SKUS, LOCATIONS, SOURCES = ["A", "B", "C"], ["S1", "S2"], ["pos", "wms"]
START_MS = 10_000
Step = tuple[Any, ...]


def _history(rng: random.Random, steps: int) -> list[Step]:
    """A random history; times are offsets from the clock at each step (facts before it may be late)."""
    def lines() -> list[tuple[str, str, int]]:
        return [(rng.choice(SKUS), rng.choice(LOCATIONS), rng.randrange(1, 5)) for _ in range(rng.randrange(1, 3))]

    def rid() -> str:
        return f"r{rng.randrange(10)}"

    history: list[Step] = []
    for _ in range(steps):
        draw = rng.random()
        if draw < 0.35:
            history.append(("fact", rng.choice(SOURCES), f"e{rng.randrange(12)}", rng.choice([1, 2, 3, 4, 5, 6, 6]),
                            rng.choice(SKUS), rng.choice(LOCATIONS), rng.randrange(1, 9), rng.randrange(-1_500, 300)))
        elif draw < 0.5:
            history.append(("reserve", rid(), lines(), rng.random() < 0.3, rng.choice([1, 2, 5])))
        elif draw < 0.58:
            history.append(("confirm", rid()))
        elif draw < 0.72:
            history.append((rng.choice(["release", "fulfill"]), rid(), rng.random() < 0.5, rng.choice(SKUS),
                            rng.choice(LOCATIONS)))
        elif draw < 0.8:
            history.append(("load", rng.choice(SOURCES), lines(), rng.randrange(-1_500, 300)))
        elif draw < 0.92:
            history.append(("tick", rng.randrange(0, 1_500)))
        else:
            history.append(("upkeep",))
    return history


class Driven:
    """A ledger, its clock (ms), and how it answers each step of a history."""

    def __init__(self, ledger: Ledger, now: int) -> None:
        self.ledger, self.now = ledger, now

    def step(self, n: int, step: Step, forgetting: bool) -> Any:
        """The answer to ``step`` (``n``: its place in the history), its batch committed; a refusal's type and
        text, its batch taken back. ``forgetting``: an upkeep pass forgets facts and frees deltas too."""
        try:
            answer = self._answer(n, step, forgetting)
        except DomainError as exc:
            self.ledger.rollback()
            return type(exc).__name__, str(exc)
        self.ledger.commit(self.now)
        return answer

    def _answer(self, n: int, step: Step, forgetting: bool) -> Any:
        ledger, kind = self.ledger, step[0]
        if kind == "fact":
            source, event_id, fact_kind, sku, location, quantity, offset = step[1:]
            return ledger.record_fact(Fact(event_id, source, fact_kind, sku, location, quantity, self.now + offset))
        if kind == "reserve":
            rid, lines, partial, ttl = step[1:]
            return reserve(ledger, reserve_command(reservation_id=rid, order_ref="o", channel="web", lines=lines,
                                                   ttl_seconds=ttl, allow_partial=partial, limits=LIMITS), self.now)
        if kind == "confirm":
            return confirm(ledger, step[1], self.now)
        if kind in ("release", "fulfill"):
            rid, whole, sku, location = step[1:]
            lines = () if whole else (LineRequest(sku, location, 1),)
            change = release if kind == "release" else fulfill
            return change(ledger, rid, lines, "" if whole else f"op{n}", self.now, LIMITS)
        if kind == "load":
            return self._load(*step[1:])
        if kind == "tick":
            self.now += step[1]
            return [expire(ledger, due, self.now) for due in ledger.due(self.now)]
        if forgetting:
            ledger.forget_old_facts()
            ledger.compact_some()
        ledger.sweep_expiry()
        return sorted(ledger.evict(self.now))  # one pass's evictions, as a set

    def _load(self, source: str, lines: list[tuple[str, str, int]], offset: int) -> Any:
        skus, locations = sorted({sku for sku, _, _ in lines}), sorted({loc for _, loc, _ in lines})
        columns = [np.array([skus.index(sku) for sku, _, _ in lines], "<u4").tobytes(),
                   np.array([locations.index(loc) for _, loc, _ in lines], "<u4").tobytes(),
                   np.array([qty for _, _, qty in lines], "<i8").tobytes(),
                   np.array([self.now + offset] * len(lines), "<i8").tobytes()]
        block, refused = count_rows(source, skus, locations, columns, self.now, LIMITS)
        outcomes, reasons = self.ledger.load_counts(block)
        return outcomes.tolist(), reasons, sorted(refused)

    def state(self) -> Any:
        """What a later read answers: each position's quantities and history, each record."""
        ledger = self.ledger
        positions = [(ledger.quantities(sku, loc), ledger.history(sku, loc)) for sku in SKUS for loc in LOCATIONS]
        return positions, sorted(ledger.reservations.items())


def _encoded(answer: Any) -> bytes:
    return msgspec.json.encode(answer, enc_hook=repr)


@pytest.mark.parametrize("seed", range(40))
def test_a_ledger_restored_from_its_snapshot_answers_every_later_command_alike_R5_E10(seed: int) -> None:
    rng = random.Random(seed)
    history = _history(rng, 250)
    cut = rng.randrange(1, len(history))
    live = Driven(Ledger(0, LIMITS), START_MS)
    for n, step in enumerate(history[:cut]):
        live.step(n, step, forgetting=True)
    stored = msgspec.msgpack.encode(live.ledger.snapshot())
    restored = Driven(Ledger.restore(0, LIMITS, msgspec.msgpack.decode(stored, type=LedgerSnapshot)), live.now)
    assert restored.state() == live.state()
    for n, step in enumerate(history[cut:], cut):
        answer = live.step(n, step, forgetting=False)
        assert _encoded(restored.step(n, step, forgetting=False)) == _encoded(answer), (n, step)
        assert restored.state() == live.state(), (n, step)
