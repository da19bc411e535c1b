"""The service shedding load (``--shed``): a shard refusing work RESOURCE_EXHAUSTED (``SHARD_OVERLOADED``)
because its mailbox is full or its queued work waits past ``max_queue_delay_ms`` (``ShardActor.submit``),
and, with several processes, a process refusing a call at its door (``SERVICE_OVERLOADED``: its event
loop late, the servicer's ``_observed``), a forwarded one too.

docs/API.md: both say "nothing applied; retry after the delay". So a call refused so is certainly not
done (``ShedCalls``): its reservation is at the step's end as it was when the step began (no record made,
no part of an order, no state changed), where no other call of the step named it and nothing else was due
to change it (its expiry, a saga left pending) — and a Reserve refused so is sent again with its id in the
next step, to decide as any first attempt (R5).

Drawn per step from a stream of their own (seeds without the flag replay as before), for a span of the
step's rounds, on one shard's group (at every process serving it) or on every shard:
- ``mailbox``: the mailbox holds 1 or 2 messages (a burst filled it): a message sent while it is full
  is shed (a coordinator's pause waits for room instead);
- ``delay``: queued work waits past the limit: a message sent while any waits is shed;
- ``busy``: every message sent is shed (a backlog behind every send: the callers' side of a shard whose
  every send finds work queued);
- ``door`` (several processes): a process refuses every call reaching it at its door.
Outside a step's calls (its quiesce, the checks, the run's end) nothing is shed.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reservation import Fact, Reason, Reservation, ResourceExhausted, State, decode_entry
from reservation import _orders as orders
from tests.sim.checks import Violation
from tests.sim.tally import Tally

if TYPE_CHECKING:
    from atp_service.engine.shard import ShardActor
    from tests.sim.faults import Call
    from tests.sim.world import World

SHED_P = 0.3
"""At a step's start, the chance something sheds during a span of its rounds."""
MODES = ("mailbox", "delay", "busy", "busy", "busy")
SHED_REASONS = frozenset({Reason.SHARD_OVERLOADED, Reason.SERVICE_OVERLOADED})
SKEW_MS = 5_000
"""More than any host's clock is off the world's (``--clock-skew``): a hold due by then may be expired."""
Seen = tuple[Reservation | None, tuple[Reservation | None, ...]]
FactKey = tuple[str, str, str, str]
"""A fact's identity at its position (E8): source, event id, SKU, location."""


def shed_refusal(error: BaseException | None) -> bool:
    """Whether ``error`` is a load-shedding refusal: certain that nothing was applied."""
    return isinstance(error, ResourceExhausted) and error.reason in SHED_REASONS


@dataclass
class Span:
    mode: str
    group: int | None  # None: every shard (or, for ``door``, the process at index ``door``)
    first: int
    rounds: int
    bound: int = 1
    door: int = 0

    def describe(self) -> str:
        where = f"process {self.door}" if self.mode == "door" else \
            "every shard" if self.group is None else f"group {self.group}"
        what = f"mailbox of {self.bound}" if self.mode == "mailbox" else self.mode
        return f"shedding ({what}) at {where}, rounds {self.first}..{self.first + self.rounds}"


class Shedding:
    def __init__(self, seed: int, tally: Tally) -> None:
        self.rng = random.Random(f"shed {seed}")
        self.tally = tally
        self.span: Span | None = None
        self.on = False
        self._touched: dict[int, tuple[ShardActor, int, float]] = {}  # id -> (actor, bound, max delay)
        self.retry: list[str] = []
        """Reservation ids whose Reserve was shed: sent again first (R5 after a refusal)."""
        self.in_step = 0

    def draw(self, shards: int, processes: int) -> str:
        """At a step's start: whether (and where, when, how) load is shed during it."""
        self.in_step, self.span = 0, None
        if self.rng.random() >= SHED_P:
            return ""
        modes = MODES + (("door",) * 2 if processes > 1 else ())
        mode = self.rng.choice(modes)
        group = self.rng.randrange(shards) if self.rng.random() < 0.75 else None
        first = self.rng.choice((0, 0, 0, 1, 2, 4))  # most calls are sent at the step's first tick
        self.span = Span(mode, group, first, self.rng.randint(1, 14), self.rng.randint(1, 2),
                         self.rng.randrange(processes))
        self.tally.shed_spans += 1
        return self.span.describe()

    def round(self, rnd: int, world: World) -> None:
        """The step's round ``rnd`` begins: shedding on in the span's rounds (on the actors serving now)."""
        span = self.span
        self.on = span is not None and span.first <= rnd < span.first + span.rounds
        if not self.on or span is None or span.mode == "door":
            self._restore()
            return
        for actor in _serving(world):
            if span.group is None or actor.shard == span.group:
                self._apply(actor, span)

    def door_refuses(self, index: int) -> bool:
        """Whether the process at ``index`` refuses a call at its door now (``SERVICE_OVERLOADED``)."""
        return self.on and self.span is not None and self.span.mode == "door" and self.span.door == index

    def end_step(self) -> str:
        """The step's calls are over: no more shedding; what was shed (trace)."""
        self.on, self.span = False, None
        self._restore()
        return f"{self.in_step} messages shed" if self.in_step else ""

    def count(self) -> None:
        self.tally.shed_refused += 1
        self.in_step += 1

    def _apply(self, actor: ShardActor, span: Span) -> None:
        if id(actor) not in self._touched:
            self._touched[id(actor)] = (actor, actor._mailbox._bound, actor._max_delay_s)
            shed = type(actor)._shed.__get__(actor)

            def counted(why: str) -> ResourceExhausted:
                self.count()
                return shed(why)

            actor._shed = counted  # type: ignore[method-assign]
        if span.mode == "mailbox":
            actor._mailbox._bound = span.bound
        elif span.mode == "delay":
            actor._max_delay_s = -1.0  # any wait is past it: shed while work is queued
        else:
            def busy(work: Any) -> Any:
                actor._refuse_if_unable()  # as ``submit``: a shard stopping, failed, in doubt or fenced says so first
                raise actor._shed("overloaded (sim: a backlog behind every send)")

            actor.submit = busy  # type: ignore[method-assign]

    def _restore(self) -> None:
        for actor, bound, delay in self._touched.values():
            actor._mailbox._bound, actor._max_delay_s = bound, delay
            for name in ("submit", "_shed"):
                actor.__dict__.pop(name, None)
        self._touched.clear()


def _serving(world: World) -> list[ShardActor]:
    processes = getattr(world, "processes", None)
    if processes is None:
        return list(world.eng.actors)
    return [actor for proc in world.running() for actor in proc.engine.actors  # type: ignore[attr-defined]
            if not actor.vacant]


class ShedCalls:
    """The calls of a step refused for load: what each one's reservations were as the step began, to be
    found the same at the step's end (nothing applied)."""

    def __init__(self, shedding: Shedding, record: Callable[[str], Reservation | None], shards: int,
                 now_at: Callable[[str], int], logged: Callable[[], list[Fact]]) -> None:
        """``now_at``: how far the clock of the group holding a reservation has come at least (``group_time``)."""
        self.shedding, self.record, self.shards, self.now_at, self.logged = shedding, record, shards, now_at, logged
        self.before: dict[int, list[tuple[str, Seen]]] = {}
        self.facts: dict[int, list[Fact]] = {}  # the step's fact calls' facts (RecordEvents, LoadCounts rows)
        self.applied: Counter[FactKey] | None = None  # each fact's times applied in the log as the step began

    def seen(self, rid: str) -> Seen:
        """A reservation's record and its order's parts (in each group: None where it has none)."""
        return self.record(rid), tuple(self.record(orders.part_id(rid, g)) for g in range(self.shards))

    def watch(self, call: Call, rids: list[str]) -> None:
        """``call`` names reservations ``rids`` (a reserve_many's in its items' order): what they are now,
        as the step begins (every group served, nothing in flight), is kept. Not as it is sent: a group
        changing hands then reads as empty at its new owner until recovered."""
        self.before[id(call)] = [(rid, self.seen(rid)) for rid in rids]

    def watch_facts(self, call: Call, batch: list[Fact]) -> None:
        """``call`` sends facts: one refused for load (its own result) must not be applied by it (E8 by identity)."""
        if self.applied is None:
            self.applied = Counter(_key(fact) for fact in self.logged())
        self.facts[id(call)] = batch

    def check(self, calls: list[Call]) -> None:
        """After the step (its quiesce): each call (or item) refused for load left its reservation as it was,
        and each fact refused so was not applied."""
        self._check_reservations(calls)
        self._check_facts(calls)
        self.forget()

    def forget(self) -> None:
        """The step is over (checked, or not checkable: a crash lost memory ahead of the log, Redis a tail)."""
        self.before.clear()
        self.facts.clear()
        self.applied = None

    def _check_facts(self, calls: list[Call]) -> None:
        sent = Counter(_key(fact) for call in calls for fact in self.facts.get(id(call), []))
        applied: Counter[FactKey] | None = None
        for call in calls:
            task, batch = call.task, self.facts.get(id(call), [])
            if not batch or task is None or not task.done() or task.cancelled() or task.exception() is not None \
                    or not isinstance(task.result(), list):
                continue  # refused whole (a part may have been applied: ``edge/record.py``), or not facts
            for fact, result in zip(batch, task.result(), strict=True):
                if not shed_refusal(result) or sent[_key(fact)] > 1 or self.applied is None:
                    continue  # another fact of the step has its identity
                self.shedding.tally.shed_calls += 1
                applied = applied or Counter(_key(f) for f in self.logged())
                if applied[_key(fact)] != self.applied[_key(fact)]:
                    raise Violation(f"shed: fact {_key(fact)} was refused for load ({result}), yet it was applied")

    def _check_reservations(self, calls: list[Call]) -> None:
        named: dict[str, int] = {}
        for call in calls:
            listed = Counter(rid for rid, _ in self.before.get(id(call), []))  # a reserve_many may name an id twice
            for rid in _named(call):
                named[rid] = named.get(rid, 0) + max(1, listed[rid])
        busy = any(call.label == "maintenance" for call in calls)  # expiries, sagas driven on
        for call in calls:
            task, before = call.task, self.before.get(id(call), [])
            if task is None or not task.done() or task.cancelled() or not before:
                continue
            error = task.exception()
            items = task.result() if error is None and isinstance(task.result(), list) else [error] * len(before)
            for (rid, was), item in zip(before, items, strict=False):
                if not shed_refusal(item):
                    continue
                self.shedding.tally.shed_calls += 1
                if call.label.startswith("reserve") and was[0] is None:
                    self.shedding.retry.append(rid)
                if named.get(rid, 0) == 1 and not busy and not self._due(was[0]):
                    self._unchanged(call, rid, was, item)  # else another call, or its expiry, may have changed it

    def _due(self, rec: Reservation | None) -> bool:
        """A hold whose expiry is due: housekeeping (at any process) may expire it, its order's parts too;
        or an order with a change pending (a saga stopped half-way), which housekeeping drives on."""
        if rec is None:
            return False
        return rec.pending is not None or (State(rec.state) == State.HELD and
                                           rec.expires_at <= self.now_at(rec.reservation_id) + SKEW_MS)

    def _unchanged(self, call: Call, rid: str, before: Seen, error: object) -> None:
        now = self.seen(rid)
        if now[0] != before[0]:
            raise Violation(f"shed: {call.label} was refused for load ({error}), yet {rid} changed: "
                            f"{_said(before[0])} as the step began, {_said(now[0])} after")
        if now[1] != before[1]:
            changed = [(b, n) for b, n in zip(before[1], now[1], strict=True) if b != n]
            raise Violation(f"shed: {call.label} was refused for load ({error}), yet parts of order {rid} changed: "
                            f"{[(_said(b), _said(n)) for b, n in changed]}")


def group_time(world: World, rid: str) -> int:
    """How far the clock of the group holding ``rid`` has come at least: the world's time, or the newest stamp the
    group logged, where the service's clock runs ahead of the world's (``--clock-jumps``: a host's wall clock set
    ahead by hours, or a group taken from such a host, R6) — a hold due by it may be expired (R3, by its group's
    stamps: ``stamps.py``). Read off the log: asking the service's clock would move its anchor (``SystemClock``)."""
    shard = next((i for i, actor in enumerate(world.eng.actors) if rid in actor.ledger.reservations), None)
    entries = world.log.history.get(shard, []) if shard is not None else []
    return max(world.clock.now_ms(), decode_entry(entries[-1][1]).ts if entries else 0)


def _key(fact: Fact) -> FactKey:
    return fact.source, fact.event_id, fact.sku, fact.location


def _named(call: Call) -> set[str]:
    """The reservation ids a call's label names (``r<n>``)."""
    words = (word.strip("[](),';") for word in call.label.split())
    return {word for word in words if word.startswith("r") and word[1:].isdigit()}


def _said(rec: Reservation | None) -> str:
    return "no record" if rec is None else f"{State(rec.state).name} {rec}"


def door_refusal(address: str) -> ResourceExhausted:
    """The servicer's refusal at its door (``edge.servicer._observed``): nothing done."""
    return ResourceExhausted(f"service overloaded (sim: {address}'s event loop late), retry with backoff",
                             Reason.SERVICE_OVERLOADED)
