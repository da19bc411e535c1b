"""Redis not answering a settle (``--settle-faults``): the fence and the reads that decide an append in doubt.

R7: a write whose outcome is unknown is in doubt until the shard has raised its fence and read what landed.
Redis slow enough to time out an append often times out the fence and the read-back after it too, so a settle's
own calls fail the same ways an append does:
- the fence (``FENCE_SCRIPT``) lost (never ran), in doubt (ran: Redis's fence raised, the answer lost, so the
  shard's token is not), or late (runs later, after newer fences: it raises Redis's fence past the token the
  shard carries, so the shard's next appends and snapshot parts are refused STALE and settled in turn);
- the reads after it (the log's end, its entries; with one process, the owner keys) time out.
A snapshot's first fence (``Checkpoints._fence_first``) meets the same fences, and the channel desk's
settle (``ChannelDesk._settle``: its fence lost or in doubt, its read of a stream's newest version timing
out) too. Each failure is one of ``durability.STORAGE_ERRORS``: the settle tries again (``landed_of``),
its waits made zero here (``no_waits``, the desk's too) so that a seed replays: the service's backoff
sleeps on wall time.

Drawn from a stream of their own, only while a step's calls run (recovery and the quiesce after a step meet a
Redis that answers), so seeds without the flag replay as before.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_service.channels import desk
from atp_service.retry import BackoffPolicy
from atp_service.storage import durability
from tests.sim.tally import Tally

FENCE_OUTCOMES = ("ok",) * 5 + ("lost", "doubt", "late")
READ_FAIL_P = 0.15
"""The chance one read of a settle (the log's end, its entries) times out."""


@dataclass(frozen=True)
class _NoWait(BackoffPolicy):
    """Tries again at the next event-loop turn: a wall-clock wait would make a seed's path depend on the machine."""

    def __post_init__(self) -> None:  # a zero wait is what BackoffPolicy refuses for the service
        pass


@contextmanager
def no_waits() -> Iterator[None]:
    """The settle's waits between tries made zero while a run with settle faults lasts."""
    before = durability.SETTLE_RETRY, desk.DESK_RETRY
    durability.SETTLE_RETRY = desk.DESK_RETRY = _NoWait(first_s=0.0, max_s=0.0, jitter=0.0)
    try:
        yield
    finally:
        durability.SETTLE_RETRY, desk.DESK_RETRY = before


class LateFence:
    """A fence script still on its way: run when it arrives, with the token it carried (``FENCE_SCRIPT``)."""

    __slots__ = ("epoch", "proc", "shard", "token")

    def __init__(self, shard: int, token: int, epoch: str, proc: Any = None) -> None:
        self.shard, self.token, self.epoch, self.proc = shard, token, epoch, proc


class SettleFaults:
    def __init__(self, seed: int, tally: Tally) -> None:
        self.rng = random.Random(f"settle faults {seed}")
        self.tally = tally
        self.active = False
        """A step's calls are running: faults happen only then."""

    def fence(self, late: bool = True) -> str:
        """The outcome of one fence: ok, lost, doubt or (``late``: one that may arrive later) late."""
        outcome = self.rng.choice(FENCE_OUTCOMES if late else FENCE_OUTCOMES[:-1]) if self.active else "ok"
        self.tally.fence_faults += outcome != "ok"
        return outcome

    def read(self, what: str) -> None:
        """A settle's read: raises when it times out."""
        if self.active and self.rng.random() < READ_FAIL_P:
            self.tally.settle_reads_failed += 1
            raise RedisTimeoutError(f"sim: {what} timed out")


def timed_out(outcome: str) -> RedisTimeoutError:
    return RedisTimeoutError(f"sim: fence timed out ({outcome})")
