"""One simulation step under faults: callers sent and abandoned at chosen event-loop turns, the log's
answers (landed, lost, in doubt, late), late scripts arriving at random turns, a Redis write pause,
channel desk rounds, and a crash or a graceful stop at any turn.

Time is counted in ticks (one ``asyncio.sleep(0)`` each); every ``TICKS`` ticks is a round, at the end
of which Redis answers whatever was sent (unless writes are paused). A caller's task is cancelled a
chosen number of ticks after it was sent, like a client deadline or a disconnect: that lands in
whatever await it is in — a coordinator pausing shards, a shard draining, an append pending.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from reservation import DomainError
from tests.sim.checks import Violation
from tests.sim.world import World

TICKS = 4
MAX_ROUNDS = 400
FAULTY = ("lost", "doubt", "late")
OUTCOMES = ("ok",) * 8 + FAULTY
CHANNEL_OUTCOMES = ("ok",) * 5 + FAULTY
AFTER_PAUSE = ("ok", "lost", "doubt", "late", "late")
FAILED_GRACE = 8
"""Ticks a stop the service decided itself (``World.must_restart``) gives the calls in progress."""


@dataclass
class Call:
    """One client call: sent at tick ``at``; abandoned ``give_up`` ticks later if not answered."""

    label: str
    start: Callable[[], Awaitable[Any]]
    book: Callable[[Any], None]
    at: int = 0
    give_up: int | None = None
    on_abandoned: Callable[[], None] | None = None
    task: asyncio.Task[Any] | None = None
    abandoned: bool = False


@dataclass
class Plan:
    """The faults of one step, drawn before it runs (the trace prints them)."""

    first_outcome: str = "ok"
    pause: tuple[int, int] | None = None  # (first round, rounds) with writes paused
    crash_at: int | None = None  # tick
    stop_at: int | None = None  # tick at which a graceful stop begins (then a restart)
    grace: int = 0  # ticks the stop waits for calls in progress before cancelling them
    late_turns: dict[int, int] = field(default_factory=dict)  # tick -> late scripts that arrive then
    desk_turns: set[int] = field(default_factory=set)  # ticks at which a desk round starts
    faulty_pumps: int = 0  # pumps after the first that may fail too

    def describe(self) -> str:
        parts = [f"first append {self.first_outcome}"]
        if self.pause:
            parts.append(f"write pause rounds {self.pause[0]}..{sum(self.pause)}")
        if self.crash_at is not None:
            parts.append(f"crash at tick {self.crash_at}")
        if self.stop_at is not None:
            parts.append(f"graceful stop at tick {self.stop_at} (grace {self.grace} ticks)")
        if self.late_turns:
            parts.append(f"late arrivals at ticks {sorted(self.late_turns)}")
        return ", ".join(parts)


def draw_plan(rng: random.Random, crash_p: float, stop_p: float) -> Plan:
    plan = Plan(first_outcome=rng.choice(OUTCOMES))
    if rng.random() < 0.12:
        plan.pause = (rng.randint(0, 3), rng.randint(2, 14))
    roll = rng.random()
    if roll < crash_p:
        plan.crash_at = rng.randint(1, 80)
    elif roll < crash_p + stop_p:
        plan.stop_at, plan.grace = rng.randint(0, 60), rng.randint(0, 20)
    for _ in range(rng.choice((0, 0, 1, 2, 3))):
        plan.late_turns[rng.randint(1, 60)] = rng.randint(1, 3)
    plan.desk_turns = {rng.randint(0, 50) for _ in range(rng.randint(0, 4))}
    plan.faulty_pumps = rng.choice((0, 0, 1, 3))
    return plan


class StepRunner:
    def __init__(self, world: World, rng: random.Random) -> None:
        self.world, self.rng = world, rng
        self.stopping: asyncio.Task[None] | None = None
        self.events: list[str] = []  # the faults as they happened, for the trace
        self.tick = 0

    async def run(self, calls: list[Call], plan: Plan) -> str | None:
        """Run the calls to their end under the plan's faults; "crash" or "stop" when the process
        ended (the driver restarts it)."""
        world, log, tick, pumps = self.world, self.world.log, 0, 0
        pause_end = None if plan.pause is None else sum(plan.pause)
        for rnd in range(MAX_ROUNDS):
            if plan.pause is not None and rnd == plan.pause[0]:
                log.pause()
            if rnd == pause_end:
                log.resume()
            if log.full is not None:
                log.full.round(rnd)  # ``--redis-full``: Redis at its maxmemory in the rounds drawn
            if world.shed is not None:
                world.shed.round(rnd, world)  # ``--shed``: shards (a process's door) shedding in the rounds drawn
            for _ in range(TICKS):
                self._fire(tick, calls, plan)
                await asyncio.sleep(0)
                tick = self.tick = tick + 1
                if tick == plan.crash_at:
                    log.tally.crashes += 1
                    return "crash"
            if self.stopping is not None and self.stopping.done():
                self.stopping.result()
                return "stop"
            if world.must_restart and self.stopping is None:  # ``atp-service serve`` stops, then exits 4
                self.stopping = asyncio.ensure_future(self._stop(calls, FAILED_GRACE))
                self.events.append(f"t{tick} the service stops to be restarted")
                world.log.tally.tail_restarts += 1
            world.check_in_flight()
            if log.paused:
                continue  # nothing is answered; callers give up, new ones queue behind
            if log.pending or world.channels.pending:
                self._pump(self._outcome(plan, pumps, rnd == pause_end))
                pumps += 1
                continue
            if tick > max((c.at for c in calls), default=0) and all(c.task and c.task.done() for c in calls) \
                    and not world.busy():
                log.tally.crashes += plan.crash_at is not None
                return "crash" if plan.crash_at is not None else None
            world.request_maintenance()  # a shard in doubt settles at its next message
        raise AssertionError("simulation stuck: commands or shards never settled (liveness)")

    def _fire(self, tick: int, calls: list[Call], plan: Plan) -> None:
        if tick == plan.stop_at:
            self.stopping = asyncio.ensure_future(self._stop(calls, plan.grace))
            self.events.append(f"t{tick} stop")
        for call in calls:
            if call.at == tick and self.stopping is None:  # a stopping service takes no new calls
                call.task = asyncio.ensure_future(call.start())
            elif call.give_up is not None and call.task is not None and tick == call.at + call.give_up \
                    and not call.task.done():
                self._abandon(call)
        if tick in plan.late_turns and (self.world.log.late or self.world.channels.late):
            self.events.append(f"t{tick} late scripts arrive")
            self.world.log.arrive_late(plan.late_turns[tick])
            self.world.channels.arrive_late(1)
        if tick in plan.desk_turns and self.world.desk is not None:
            self.world.desk.kick()
        if self.world.jumps is not None and (jumped := self.world.jumps.tick(tick)):  # ``--clock-jumps``
            self.events.append(jumped)
        self.world.on_tick(tick)

    def _abandon(self, call: Call) -> None:
        assert call.task is not None
        call.task.cancel()
        call.abandoned = True
        self.events.append(f"t{self.tick} {call.label.split(' [')[0][:40]} gave up")
        log = self.world.log
        log.tally.cancelled += 1
        log.tally.cancelled_pending += bool(log.pending)
        log.tally.cancelled_paused += log.paused
        if call.on_abandoned is not None:
            call.on_abandoned()

    async def _stop(self, calls: list[Call], grace: int) -> None:
        """A graceful stop, as the service makes it: calls in progress get ``grace`` turns to finish,
        then are cancelled (gRPC's grace period); the desk stops, then the engine (drain, snapshot)."""
        for _ in range(grace):
            await asyncio.sleep(0)
        for call in calls:
            if call.task is not None and not call.task.done():
                self._abandon(call)
        if self.world.desk is not None:
            await self.world.desk.stop()
            await self.world.desk.desk.stop()
        await self.world.eng.stop(snapshot=True)
        self.world.log.tally.stops += 1

    def _outcome(self, plan: Plan, pumps: int, after_pause: bool) -> str:
        if after_pause:
            return self.rng.choice(AFTER_PAUSE)  # what waited out the pause timed out, or got through
        if pumps == 0:
            return plan.first_outcome
        if pumps <= plan.faulty_pumps:
            return self.rng.choice(OUTCOMES)
        return "ok"

    def _pump(self, outcome: str) -> None:
        """Redis answers: the log's appends (sometimes only the oldest few: a script call of their
        own, the rest answered next round), then the desk's write; sometimes the desk starts a round."""
        log, rng = self.world.log, self.rng
        late_first = rng.random() < 0.7
        count = rng.randint(1, len(log.pending)) if log.pending and rng.random() < 0.3 else None
        channel = rng.choice(CHANNEL_OUTCOMES)
        overtaking = not late_first and bool(log.late)
        if outcome != "ok" or count is not None or overtaking:
            self.events.append(f"t{self.tick} appends {outcome}{f' (oldest {count})' if count else ''}"
                               f"{', overtaking late ones' if overtaking else ''}")
        if channel != "ok" and self.world.channels.pending:
            self.events.append(f"t{self.tick} channel write {channel}")
        log.pump(outcome, late_first, count)
        self.world.channels.pump(channel, late_first)
        if self.world.desk is not None and rng.random() < 0.25:
            self.world.desk.kick()


def collect(calls: list[Call], book: bool = True) -> None:
    """Book what each caller was told; an abandoned caller was told nothing (R8). ``book`` False: what
    they were told is checked for errors but not booked (Redis lost a tail during the step)."""
    for call in calls:
        task = call.task
        if task is None:
            continue  # never sent: the service was stopping
        assert task.done()
        if task.cancelled():
            if not call.abandoned:
                raise Violation(f"R8: {call.label} ended CANCELLED though its caller never gave up")
            continue
        error = task.exception()
        if error is None:
            if book:
                call.book(task.result())
        elif not isinstance(error, DomainError):
            raise error
