"""The membership faults of one step of a multi-process seed, drawn before the step runs and fired at
their ticks (``ClusterWorld.on_tick``): a process killed (its leases running out one by one later, its
groups then taken by others), paused (the same while it is stopped; then it runs again, finding its
writes refused), a group handed over gracefully, a graceful stop; processes renewing and balancing;
late order-step requests arriving. A step does not end before everything drawn has fired.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable

from tests.sim.cluster import ClusterWorld
from tests.sim.process import Process
from tests.sim.suspends import SUSPEND_P, stale_reads

KILL_P, PAUSE_P, HAND_OVER_P, STOP_P = 0.1, 0.1, 0.1, 0.04


class Disruptor:
    def __init__(self, world: ClusterWorld, rng: random.Random) -> None:
        self.world, self.rng = world, rng
        self.due: dict[int, list[tuple[str, Callable[[], None]]]] = defaultdict(list)
        self.plan: list[str] = []
        self.events: list[str] = []  # as they fired, for the trace
        self.long_pauses: list[tuple[Process, int]] = []  # (process, tick paused) of each pause past its leases

    def draw(self) -> None:
        world, rng = self.world, self.rng
        running, roll = world.running(), rng.random()
        if len(running) >= 2 and roll < KILL_P:
            self._kill(rng.choice(running))
        elif len(running) >= 2 and roll < KILL_P + PAUSE_P:
            self._pause(rng.choice(running))
        elif roll < KILL_P + PAUSE_P + HAND_OVER_P:
            self._hand_over(rng.choice(running))
        elif len(running) >= 2 and roll < KILL_P + PAUSE_P + HAND_OVER_P + STOP_P:
            self._stop(rng.choice(running))
        for _ in range(rng.choice((0, 1, 1, 2))):
            self._turn(rng.randint(0, 60))
        for _ in range(rng.choice((0, 0, 1, 2))):
            count = rng.randint(1, 3)
            self._at(rng.randint(1, 60), f"{count} late step requests arrive",
                     lambda count=count: world.network.arrive(count))  # type: ignore[misc]

    def fire(self, tick: int) -> None:
        for label, action in self.due.pop(tick, []):
            self.events.append(f"t{tick} {label}")
            action()

    def pending(self) -> bool:
        return bool(self.due)

    def describe(self) -> str:
        return "; ".join(self.plan)

    # -- the faults ---------------------------------------------------------------------------------
    def _at(self, tick: int, label: str, action: Callable[[], None]) -> None:
        self.due[tick].append((label, action))

    def _turn(self, tick: int) -> None:
        """A running process (drawn when it fires) renews and balances: it may take free groups."""
        self._at(tick, "a process balances", lambda: self._turn_now())

    def _turn_now(self) -> None:
        running = self.world.running()
        if running:
            self.world.turn(self.rng.choice(running))

    def _leases_run_out(self, proc: Process, after: int, within: int) -> None:
        """Each lease of ``proc`` runs out at its own tick (renewed at different times before)."""
        for group in range(self.world.config.shards):
            tick = after + self.rng.randint(1, within)
            self._at(tick, f"{proc.address}'s lease on group {group} runs out",
                     lambda group=group: self.world.expire(proc, group))  # type: ignore[misc]

    def _kill(self, proc: Process) -> None:
        at = self.rng.randint(1, 60)
        self.plan.append(f"kill {proc.address} at t{at}")
        self._at(at, f"kill {proc.address}", lambda: self.world.kill(proc))
        self._leases_run_out(proc, at, 40)
        for _ in range(2):
            self._turn(at + self.rng.randint(10, 70))

    def _pause(self, proc: Process) -> None:
        """Mostly long enough for its leases to run out and others to take its groups; else brief."""
        at, long = self.rng.randint(0, 40), self.rng.random() < 0.7
        resume = at + (self.rng.randint(50, 100) if long else self.rng.randint(1, 20))
        sleeps = self.world.sleeps  # ``--suspends``: some pauses its host's suspends (``suspends.py``)
        how = "suspend" if sleeps.rng is not None and sleeps.rng.random() < SUSPEND_P else "pause"
        self.plan.append(f"{how} {proc.address} t{at}..t{resume}")
        if long:
            self.long_pauses.append((proc, at))
        stopped: list[bool] = []  # whether it stopped the process: if not, its end runs nothing again
        self._at(at, f"{how} {proc.address}",
                 lambda: stopped.append(self._stop_running(proc, how == "suspend", long)))
        self._leases_run_out(proc, at if long else resume, 25)  # a brief pause: renewed in time, none runs out
        for _ in range(2):
            self._turn(at + self.rng.randint(26, 45) if long else self.rng.randint(0, 60))
        self._at(resume, f"{proc.address} runs again", lambda: self._run_again(proc) if any(stopped) else None)
        self._at(resume + self.rng.randint(0, 20), f"{proc.address} renews", lambda: self.world.turn(proc))

    def _stop_running(self, proc: Process, suspend: bool, long: bool) -> bool:
        """``proc`` stopped (its host suspended): False, nothing done, where it is stopped already or dead. Drawn at
        the step's start, a pause may fire on a process another one stopped since (``inputholds``): its end would
        run that one again early, its leases' deadlines left as that pause's expiries left them (``expire``)."""
        if proc.dead or proc.frozen:
            self.events.append(f"{proc.address} stopped already: not stopped again")
            return False
        self.world.pause(proc)
        if not long:
            self.world.leases.brief.add(proc.holder)
        if suspend:  # its monotonic clock stands still, its boot and wall clocks move on
            slept = self.world.sleeps.suspend(proc.address, long)
            self.world.log.tally.host_suspends += 1
            self.events.append(f"{proc.address}'s host suspended for {slept:.0f} s")
        return True

    def _run_again(self, proc: Process) -> None:
        proc.log.thaw()
        self.world.leases.brief.discard(proc.holder)
        if self.world.sleeps.slept_now(proc.address):
            self.world.sleeps.asleep.discard(proc.address)
            stale_reads(self.world, proc)  # R7: woken, it answers no read of a group taken meanwhile

    def _hand_over(self, proc: Process) -> None:
        at = self.rng.randint(0, 60)
        self.plan.append(f"{proc.address} hands a group over at t{at}")
        self._at(at, f"{proc.address} hands a group over", lambda: self.world.hand_over(proc))
        self._turn(at + self.rng.randint(3, 50))

    def _stop(self, proc: Process) -> None:
        at = self.rng.randint(0, 60)
        self.plan.append(f"graceful stop of {proc.address} at t{at}")
        self._at(at, f"{proc.address} stops", lambda: self.world.stop_process(proc))
        for _ in range(2):
            self._turn(at + self.rng.randint(5, 70))
