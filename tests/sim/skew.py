"""Hosts whose clocks disagree (``--clock-skew``): each simulated service process runs the product's own
``SystemClock`` (as ``AtpService`` builds one per process) over a host clock of its own — the world's
manual clock plus an offset of that host, drawn within ``SKEW_BOUND_MS`` either way (what NTP keeps hosts
within) — and now and then one host's wall clock steps back (an NTP step), to another offset within the
bound; its monotonic clock goes on at the world's rate. A group taken over is stamped by the product's
``GroupClock`` over the taker's clock (``membership.SimMembership.take``, as ``Membership._take``).

What the invariants allow under skew (docs/SEMANTICS.md R6): a hold's TTL counts from its group's own
stamps, so across a takeover it may expire up to the skew early or late in the world's time — that is not
checked; what is checked (``stamps.py``): no stamp below one already logged in its group, and no hold
expired before its TTL *by its group's stamps*. The fault draws from its own random stream, and only with
the flag: seeds without it replay as before.
"""

from __future__ import annotations

import random

from atp_service.engine.clock import ManualClock, SystemClock

SKEW_BOUND_MS = 2_000
"""How far a host's wall clock may be from the world's, either way (NTP's bound here)."""
STEP_BACK_P = 0.1
"""At a step's start, the chance that one host's wall clock steps back (to a lower offset within the bound)."""


class SkewedHosts:
    """Each host's (process address's) offset from the world clock; a restarted process keeps its host's."""

    def __init__(self, seed: int, world_clock: ManualClock) -> None:
        self._rng = random.Random(f"clock skew {seed}")
        self._world = world_clock
        self.offsets: dict[str, int] = {}

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

    def describe(self) -> str:
        return ", ".join(f"{address} {offset:+d} ms" for address, offset in sorted(self.offsets.items()))
