"""Hosts whose clocks disagree (``--clock-skew``): each simulated service process runs the product's own
``SystemClock`` (as ``AtpService`` builds one per process) over a host clock of its own — the world's
manual clock plus an offset of that host, drawn within ``SKEW_BOUND_MS`` either way (what NTP keeps hosts
within) — and now and then one host's wall clock steps back or forward (an NTP step), to another offset
within the bound; its monotonic clock goes on at the world's rate. A group taken over is stamped by the
product's ``GroupClock`` over the taker's clock (``membership.SimMembership.take``, as ``Membership._take``):
on from what its previous owner logged, until a forward step takes the taker's clock past it.

What the invariants allow under skew (docs/SEMANTICS.md R6): a hold's TTL counts from its group's own
stamps, so across a takeover it may expire up to the skew early or late in the world's time — that is not
checked; what is checked (``stamps.py``): no stamp below one already logged in its group, and no hold
expired before its TTL *by its group's stamps*; and at each step's end (``leads``) no group's clock reads
ahead of the furthest a host's wall clock may be (the world's plus ``SKEW_BOUND_MS``): a taken group's lead
kept for good grew by a gap at each move to a host behind that then stepped forward, past what the
order-id-reuse rules allow (R3). The faults draw from their own random streams, and only with the flag: seeds
without it replay as before.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import TYPE_CHECKING

from atp_service.engine.clock import GroupClock, ManualClock, SystemClock
from tests.sim.checks import Violation

if TYPE_CHECKING:
    from tests.sim.process import Process
    from tests.sim.tally import Tally

SKEW_BOUND_MS = 2_000
"""How far a host's wall clock may be from the world's, either way (NTP's bound here)."""
STEP_BACK_P = 0.1
"""At a step's start, the chance that one host's wall clock steps back (to a lower offset within the bound)."""
STEP_FORWARD_P = 0.1
"""At a step's start, the chance that one host's wall clock steps forward (to a higher offset within the bound)."""


class SkewedHosts:
    """Each host's (process address's) offset from the world clock; a restarted process keeps its host's."""

    def __init__(self, seed: int, world_clock: ManualClock) -> None:
        self._rng = random.Random(f"clock skew {seed}")
        self._forward = random.Random(f"clock skew forward {seed}")  # a stream of its own: the steps forward
        self._world = world_clock
        self.offsets: dict[str, int] = {}
        self._leads: dict[GroupClock, int] = {}  # a taken group's clock -> how far it read ahead of its process's

    def clock_for(self, address: str) -> SystemClock:
        """A new process's clock on host ``address``: the product's, over that host's wall clock."""
        if address not in self.offsets:
            self.offsets[address] = self._rng.randint(-SKEW_BOUND_MS, SKEW_BOUND_MS)
        return SystemClock(wall_ns=lambda: (self._world.now_ms() + self.offsets[address]) * 1_000_000,
                           mono_ns=lambda: self._world.now_ms() * 1_000_000)

    def lowest_offset(self) -> int:
        """The furthest behind the world any host's wall clock is now (0 if none is): no clock of a
        process, nor of a group it serves, reads below the world's time plus this."""
        return min(0, *self.offsets.values()) if self.offsets else 0

    def maybe_step_back(self) -> str | None:
        """Now and then one host's wall clock steps back; what happened, for the trace (None: nothing)."""
        if not self.offsets or self._rng.random() >= STEP_BACK_P:
            return None
        address = self._rng.choice(sorted(self.offsets))
        before = self.offsets[address]
        if before <= -SKEW_BOUND_MS:
            return None
        self.offsets[address] = self._rng.randint(-SKEW_BOUND_MS, before - 1)
        return f"{address}'s wall clock stepped back {before - self.offsets[address]} ms"

    def maybe_step_forward(self) -> str | None:
        """Now and then one host's wall clock steps forward; what happened, for the trace (None: nothing)."""
        if not self.offsets or self._forward.random() >= STEP_FORWARD_P:
            return None
        address = self._forward.choice(sorted(self.offsets))
        before = self.offsets[address]
        if before >= SKEW_BOUND_MS:
            return None
        self.offsets[address] = self._forward.randint(before + 1, SKEW_BOUND_MS)
        return f"{address}'s wall clock stepped forward {self.offsets[address] - before} ms"

    def leads(self, processes: Iterable[Process], tally: Tally) -> None:
        """R6, R3: no clock of a live process, nor of a group it serves, reads past the furthest ahead a host's wall
        clock may be; a taken group's lead over its process's clock gone (a forward step passed it) is counted."""
        bound = self._world.now_ms() + SKEW_BOUND_MS
        for proc in processes:
            if proc.dead:
                continue
            base = proc.engine.clock.now_ms()
            for actor in proc.engine.actors:
                if (now := actor.clock.now_ms()) > bound:
                    raise Violation(f"R6: group {actor.shard}'s clock at {proc.address} reads {now - bound} ms past "
                                    f"the furthest ahead a host's clock may be ({SKEW_BOUND_MS} ms past the world's)")
                if isinstance(actor.clock, GroupClock):
                    before, self._leads[actor.clock] = self._leads.get(actor.clock, 0), now - base
                    tally.leads_passed += int(before > 0 and now == base)

    def describe(self) -> str:
        return ", ".join(f"{address} {offset:+d} ms" for address, offset in sorted(self.offsets.items()))
