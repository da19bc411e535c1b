"""One way to wait between tries: exponential backoff with jitter, bounded, cancellation-safe.

Every loop of the service that waits for a dependency to come back (Redis at start, a settle
reading the log, the input streams, the channel desk) uses it, so each waits the same way and
none can spin or sleep unboundedly. Cancelled while waiting, it stops at once (the wait is a plain
``asyncio.sleep``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class BackoffPolicy:
    first_s: float
    """The wait after the first failure."""
    max_s: float
    """No wait is longer than this."""
    multiplier: float = 2.0
    """Each wait is this many times the one before (until ``max_s``)."""
    jitter: float = 0.2
    """This fraction of each wait is drawn at random, so that many waiters do not retry in step."""

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.max_s:
            raise ValueError(f"first_s: must be > 0 and <= max_s ({self.max_s}), got {self.first_s}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier: must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter: must be within [0, 1], got {self.jitter}")


class Backoff:
    """The waits of one retry loop: growing from ``first_s`` to ``max_s``; ``reset`` after a success."""

    __slots__ = ("_next", "_rng", "failures", "policy")

    def __init__(self, policy: BackoffPolicy, rng: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self._rng = rng
        self._next = policy.first_s
        self.failures = 0
        """Failures since the last ``reset``."""

    def next_delay(self) -> float:
        """The wait after one more failure."""
        p = self.policy
        base = self._next
        self._next = min(base * p.multiplier, p.max_s)
        self.failures += 1
        return base * (1 - p.jitter * self._rng())

    def reset(self) -> None:
        self._next, self.failures = self.policy.first_s, 0

    async def wait(self) -> float:
        """Sleep the next wait; returns how long it was."""
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay


async def retry_until_done(
    attempt: Callable[[], Awaitable[T]], errors: tuple[type[BaseException], ...], policy: BackoffPolicy,
    on_error: Callable[[BaseException, float], None] | None = None,
) -> T:
    """``attempt()`` until it returns, waiting after each failure that is one of ``errors`` (others
    propagate); ``on_error(error, wait)`` is told of each. For waits on a dependency that must come
    back (the shard or the desk can do nothing meanwhile): the waits are bounded, the tries are not."""
    backoff = Backoff(policy)
    while True:
        try:
            return await attempt()
        except errors as exc:
            delay = backoff.next_delay()
            if on_error is not None:
                on_error(exc, delay)
            await asyncio.sleep(delay)

