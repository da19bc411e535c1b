"""``--input-streams --processes 2|3 --new-addresses``: processes stopped past their sweep (``inputcluster.py``).

A departed consumer's sweep (``intake/departed.py``) takes a process that is only stopped for gone where it was seen
live no more: its leases ran out (no member, holding no group), nothing pending to it (its entries claimed), idle past
``claim_idle_ms``. Its run beside the quarantine stream is deleted with it; a quarantine write of that run landing late,
once the process runs again, must land nothing (E8: ``quarantine._ONCE`` refuses it as swept), and the process draws
its run again at its next sweep (``DepartedConsumers.kept_run``). The step's own pauses, drawn at ticks, rarely stop a
process that holds a quarantine write, and the clock moves only between steps: seeds rarely reached that refusal. So:

- a process paused past its leases (``Disruptor.long_pauses``) stays stopped past ``claim_idle_ms`` (its host stopped,
  the others' clocks running on), and the others claim and sweep meanwhile (``_past_claims``);
- a quarantine write about to be sent (``Writes.before``) stops its process there now and then (``HELD_PAUSE_P``, its
  own draws), past its leases and ``claim_idle_ms`` likewise, then it runs again and the write lands late.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from tests.sim.disrupt import Disruptor
from tests.sim.faults import Call, StepRunner
from tests.sim.inputreaders import CLAIM_IDLE_MS, turn
from tests.sim.process import Process

if TYPE_CHECKING:
    from tests.sim.inputcluster import InputsClusterDriver

HELD_PAUSE_P = 0.25
"""The chance that a process is stopped holding a quarantine write it is about to send (``StoppedHolding.holding``)."""
LEASES_OUT, OTHERS_TURNED = 25, 45
"""Ticks after a pause by which its leases have run out, and the others have balanced (as ``Disruptor._pause``)."""


class StoppedHolding:
    def __init__(self, driver: InputsClusterDriver, seed: int) -> None:
        self.driver = driver
        self.rng = random.Random(f"held writes {seed}")  # its own draws: the step's are left as they were
        self.runner: StepRunner | None = None  # the step's, while it runs
        self.calls: list[Call] = []  # the step's: a claim added runs in it (``StepRunner`` waits for each)
        self.held = 0  # processes stopped holding a quarantine write (for the tally)

    def step(self, disruptor: Disruptor, calls: list[Call]) -> None:
        """At a step's start: each pause drawn past its leases lasts past ``claim_idle_ms``, the others sweeping."""
        self.calls = calls
        for proc, at in disruptor.long_pauses:
            self._past_claims(disruptor, proc, at)

    def _past_claims(self, disruptor: Disruptor, proc: Process, at: int) -> None:
        disruptor._at(at + OTHERS_TURNED + 1, f"{CLAIM_IDLE_MS} ms pass while {proc.address} is stopped",
                      lambda: self.driver.world.clock.advance(CLAIM_IDLE_MS))
        self.calls.append(Call(f"the others claim and sweep while {proc.address} is stopped",
                               lambda p=proc: self._claims_beside(p), lambda _: None, at=at + OTHERS_TURNED + 2))

    def holding(self, proc: Process) -> None:
        """A quarantine write of ``proc`` about to be sent (``Writes``): now and then ``proc`` is stopped there, past
        its leases and ``claim_idle_ms``, and runs again some ticks later, the write then sent."""
        world, disruptor, runner, rng = self.driver.cluster, self.driver.cluster.step_faults, self.runner, self.rng
        if runner is None or not isinstance(disruptor, Disruptor) or proc.dead or proc.frozen or \
                len(world.running()) < 2 or rng.random() >= HELD_PAUSE_P:
            return
        at = runner.tick
        resume = at + rng.randint(OTHERS_TURNED + 5, 100)
        self.held += 1
        disruptor.events.append(f"t{at} pause {proc.address} holding a quarantine write, until t{resume}")
        disruptor._stop_running(proc, False, True)
        for group in range(world.config.shards):
            disruptor._at(at + rng.randint(1, LEASES_OUT), f"{proc.address}'s lease on group {group} runs out",
                          lambda group=group: world.expire(proc, group))  # type: ignore[misc]
        disruptor._at(at + rng.randint(LEASES_OUT + 1, OTHERS_TURNED), "the others balance",
                      lambda: self._others_turn(proc))
        self._past_claims(disruptor, proc, at)
        disruptor._at(resume, f"{proc.address} runs again", lambda: disruptor._run_again(proc))
        disruptor._at(resume + rng.randint(0, 20), f"{proc.address} renews", lambda: world.turn(proc))

    def _others_turn(self, stopped: Process) -> None:
        for proc in self.driver.cluster.running():
            if proc is not stopped:
                self.driver.cluster.turn(proc)

    async def _claims_beside(self, stopped: Process) -> None:
        """A claim (and the sweep after it) by each running process's reader but ``stopped``'s."""
        for proc in self.driver.cluster.running():
            reader = self.driver.current(proc)
            if proc is stopped or reader is None:
                continue
            task = proc.spawn(turn(reader, True, after_pass=True))
            await asyncio.wait({task})
