"""Redis at its ``maxmemory`` (``noeviction``) refusing writes OOM (``--redis-full``).

docs/OPERATIONS.md ("Redis out of memory"): a full Redis refuses every write command, and a script
without ``allow-oom`` at its first write, so nothing of it is applied; the service takes such a refusal
as certain (``resp.out_of_memory``): an append refused OOM is not in doubt (``CommitPipeline._cannot_land``),
a change across shards neither (``Coordinator._durable``), an id claim is not sent again
(``storage/ids.py``), a channel write is settled as any failed one. The fence, the snapshot and its
trim run all the same (``ALLOW_OOM``): the trim is what makes room.

Two shapes, drawn per step from a stream of their own (seeds without the flag replay as before):
- a span of rounds in which Redis is full: every append, channel write and id claim that reaches
  it then is refused OOM — scripts on their way (``late``) and a killed process's writes too;
- memory near the limit: any one of those writes, in or out of a span, refused now and then
  (the next one may land: a trim freed room meanwhile).

A refused write changes nothing in the simulated Redis, so the invariants (E10 memory equals a replay
of the log, R2, C4, R8, liveness once Redis has room again) say whether the service was right to take
it as certain. Outside a step's calls (its quiesce, the run's end) Redis has room.
"""

from __future__ import annotations

import random

from redis.exceptions import ResponseError

from tests.sim.tally import Tally

OOM_MESSAGE = "OOM command not allowed when used memory > 'maxmemory'."
"""Redis's refusal, word for word (what ``resp.out_of_memory`` knows it by)."""
FULL_P = 0.15
"""At a step's start, the chance Redis is full for a span of the step's rounds."""
NEAR_P = 0.04
"""While a step's calls run, the chance any one write is refused OOM outside a span."""


class RedisFull:
    def __init__(self, seed: int, tally: Tally) -> None:
        self.rng = random.Random(f"redis full {seed}")
        self.tally = tally
        self.span: tuple[int, int] | None = None  # (first round, rounds) of this step with Redis full
        self.full = False
        self.active = False
        """A step's calls are running: refusals happen only then."""
        self.in_step = 0  # writes refused OOM in this step (for the trace)

    def draw(self) -> str:
        """At a step's start: whether (and when) Redis is full during it."""
        self.span = (self.rng.randint(0, 6), self.rng.randint(1, 12)) if self.rng.random() < FULL_P else None
        self.active, self.full, self.in_step = True, False, 0
        return "" if self.span is None else f"Redis full rounds {self.span[0]}..{sum(self.span)}"

    def round(self, rnd: int) -> None:
        """The step's round ``rnd`` begins."""
        if self.span is not None:
            self.full = self.span[0] <= rnd < sum(self.span)

    def end_step(self) -> str:
        """The step's calls are over: Redis has room again (an operator gave it some); what it refused (trace)."""
        self.active = self.full = False
        self.span = None
        return f"{self.in_step} writes refused OOM" if self.in_step else ""

    def refuses(self) -> bool:
        """Whether a write reaching Redis now is refused OOM."""
        if not self.active:
            return False
        refused = self.full or self.rng.random() < NEAR_P
        self.tally.oom_refused += refused
        self.in_step += refused
        return refused


def oom() -> ResponseError:
    return ResponseError(OOM_MESSAGE)


def refuses(full: RedisFull | None) -> bool:
    """``full.refuses()``, where the run has the fault at all."""
    return full is not None and full.refuses()
