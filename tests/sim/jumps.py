"""A clock jumping by hours (``--clock-jumps``), at a tick of a step while its calls run.

Three jumps, each drawn with its tick and size (1 to 7 hours):
- ``suspended``: the world's time moves on by hours at once (every host suspended or stopped together, a VM
  live-migrated): every process's clock and Redis's move together, so every hold's TTL runs out at once (R3),
  expired by housekeeping (one process: its turns; several: order sagas too) while calls, appends and settles
  are in flight. Leases here lapse by the driver's kills and pauses (``disrupt.py``), not by the clock: a shard's
  lease clock is the product's over its host's clocks, the world's (``suspends.py``), but its deadline is the
  driver's (``ShardActor.lease_until``: endless, or passed), or with ``--suspends`` an hour past a renewal, which
  such a jump passes (the groups unanswered till the next renewal, which finds the leases still held). The run's
  windows (``retention_ms``, ``fact_grace_ms``: ten years, ``sim_config``) are not reached: what R5 and E8
  forget is not judged here;
- ``ahead``: one host's wall clock steps forward by hours (a bad NTP source, a hand set), its monotonic clock
  not: the product's ``SystemClock`` follows it, so the holds of the groups its process serves expire early in
  the world's time — allowed (R6: TTLs count from the service's stamps); its leases are not shortened here (the
  product's lease clock ends them, the groups unanswered till the next renewal: not modelled, as above), but a
  group taken from that process is stamped hours ahead of its taker (``GroupClock``);
- ``back`` (after ``ahead``): that wall clock stepped back to where it was (NTP corrected it): the service's
  clock must not go back (R6): it counts on from its newest stamp at the monotonic rate, and a process
  started while its wall clock is behind a log's stamps floors the group's clock to them.

The invariants are the run's usual ones (never oversold, nothing acknowledged lost, every shard answering, R3's
expiry by each group's own stamps, memory equal to a replay of the log), and R6's counting on: at each step's end
every host's service clock has moved at least as far as the world's monotonic time since the last (``counted``), so
TTLs keep counting behind a wall clock stepped back — a clock standing still there (its newest stamp repeated until
the wall clock caught up, every hold kept for hours) held every other invariant with two processes.

Facts are stamped by the world's clock: with a host clock hours ahead they are hours old to the service, so this
flag does not go with the fact-time flags (``--fact-times``, ``--short-grace``), whose checks judge facts by the
world's clock — but for ``--input-streams --fact-times``, whose checks take each refusal as the clock that judged it
made it (``inputchecks``). Drawn from a stream of its own, only with the flag: seeds without it replay as before.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from atp_service.engine.clock import ManualClock, SystemClock
from tests.sim.checks import Violation
from tests.sim.tally import Tally

JUMP_P = 0.12
"""At a step's start, the chance that the clock jumps at a tick of the step."""
HOUR_MS = 3_600_000
LAST_TICK = 60
"""A jump's tick is drawn up to here: while the step's calls are sent, wait, are abandoned."""
HOST = "host"
"""The one process's host (one process)."""


class ClockJumps:
    """Each host's clock: the world's (``--clock-skew``: plus the host's skew), plus how far its wall clock was set
    ahead (``ahead``, per host address)."""

    def __init__(self, seed: int, tally: Tally, world_clock: ManualClock) -> None:
        self._rng = random.Random(f"clock jumps {seed}")
        self._world = world_clock
        self._tally = tally
        self.ahead: dict[str, int] = {}
        self.planned: tuple[int, str, str, int] | None = None  # (tick, kind, host, ms)
        self._counted: dict[str, tuple[SystemClock, int, int]] = {}
        """Per host, its newest process's clock, and its stamp and the world's time when ``counted`` last read it."""

    def clock_for(self, address: str = HOST, skew_ms: Callable[[], int] = lambda: 0) -> SystemClock:
        """A new process's clock on host ``address``: the product's, over that host's wall clock and the world's
        rate (``skew_ms``: the host's offset, ``skew.SkewedHosts``)."""
        self.ahead.setdefault(address, 0)
        clock = SystemClock(wall_ns=lambda: (self._world.now_ms() + skew_ms() + self.ahead[address]) * 1_000_000,
                            mono_ns=lambda: self._world.now_ms() * 1_000_000)
        self._counted[address] = (clock, clock.now_ms(), self._world.now_ms())
        return clock

    def counted(self) -> None:
        """R6: each host's service clock has counted on at least as far as the world's monotonic time since it was
        last read, whatever its wall clock did (``SystemClock``: never stands still; a group's ``GroupClock`` counts
        at its rate). Behind a wall clock stepped back, a clock repeating its newest stamp stopped every TTL."""
        world = self._world.now_ms()
        for host, (clock, stamp, at) in self._counted.items():
            if (now := clock.now_ms()) - stamp < world - at:
                raise Violation(f"R6: {host}'s service clock moved {now - stamp} ms while {world - at} ms passed "
                                "(its monotonic clock): its TTLs did not count on")
            self._counted[host] = (clock, now, world)

    def draw(self) -> str | None:
        """The step's jump, if any, for the trace."""
        self.planned = None
        if self._rng.random() >= JUMP_P or not self.ahead:
            return None
        tick, host = self._rng.randint(1, LAST_TICK), self._rng.choice(sorted(self.ahead))
        if self.ahead[host] and self._rng.random() < 0.6:
            self.planned = (tick, "back", host, self.ahead[host])
        else:
            kind = self._rng.choice(("suspended", "ahead"))
            self.planned = (tick, kind, host, self._rng.randint(1, 6) * HOUR_MS + self._rng.randrange(HOUR_MS))
        return f"clock jump at tick {tick}: {self._describe(*self.planned[1:])}"

    @staticmethod
    def _describe(kind: str, host: str, ms: int) -> str:
        return f"every clock {kind} {ms} ms" if kind == "suspended" else f"{host}'s wall clock {kind} {ms} ms"

    def tick(self, tick: int) -> str | None:
        """Fire the jump due at ``tick``; what happened, for the trace."""
        if self.planned is None or self.planned[0] != tick:
            return None
        _, kind, host, ms = self.planned
        self.planned = None
        if kind == "suspended":
            self._world.advance(ms)
        else:
            self.ahead[host] += ms if kind == "ahead" else -ms
        self._tally.clock_jumps += 1
        return f"t{tick} {self._describe(kind, host, ms)}"

    def end_step(self) -> None:
        """A jump drawn past the step's last tick does not happen."""
        self.planned = None
