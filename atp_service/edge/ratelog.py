"""Log lines that any caller can provoke at will (bad bytes, a missing token), rate-limited.

One line per bad call lets a flood of them flood the log and bury everything else; none hides them.
So a token bucket: ``burst`` lines back to back, then one per ``interval_s``, and the next line that
gets through says how many were left out (its field ``left_out``). Each call is still counted in a
metric by the caller.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from atp_service.logs import counted


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, level: int, *, burst: int = 10, interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        """Its lines' logger (``atp_service.audit`` for ``auth_denied``): the count left out at the stop said there."""
        self._level = level
        self._burst = float(burst)
        self._interval_s = interval_s
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self.left_out = 0
        """Lines suppressed since the last one written."""
        self.event: str | None = None
        """Its lines' ``event``: those left out said at the process's stop (``logs.say_left_out``)."""
        counted(self)

    def log(self, message: str, *args: object, **fields: object) -> None:
        """``message % args``, with ``fields`` as the line's structured fields (``extra=``)."""
        self.event = str(fields["event"]) if "event" in fields else None
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) / self._interval_s)
        self._last = now
        if self._tokens < 1:
            self.left_out += 1
            return
        self._tokens -= 1
        if self.left_out:
            fields["left_out"] = self.left_out
            self.left_out = 0
        self.logger.log(self._level, message, *args, extra=fields)


class OncePerKey:
    """Whether a line about ``key`` (a peer's address) is written now: at most once per
    ``interval_s`` each, with at most ``max_keys`` keys remembered — the one written least recently
    forgotten first, whose next line is then written at once. One entry per key ever met, kept for
    good, grew with every process that ever left the keyspace."""

    def __init__(self, interval_s: float, max_keys: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s, self._max_keys, self._clock = interval_s, max_keys, clock
        self._written_at: dict[str, float] = {}  # the most recently written last

    def __len__(self) -> int:
        return len(self._written_at)

    def due(self, key: str) -> bool:
        now = self._clock()
        at = self._written_at.get(key)
        if at is not None and now - at < self._interval_s:
            return False
        self._written_at.pop(key, None)
        self._written_at[key] = now
        while len(self._written_at) > self._max_keys:
            del self._written_at[next(iter(self._written_at))]
        return True
