"""Groups changing hands at a process (``ownership = leases``): a stop's hand-overs of its groups
(``Membership.stop``), a start's first share (``first_share``), and what a taking whose recovery failed says."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import AuthenticationError, AuthorizationError, ReadOnlyError, RedisClusterException

from atp_service.edge.ratelog import OncePerKey
from atp_service.engine.recovery import UNRECOVERABLE
from atp_service.instruments import Counter
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.log import Fenced
from atp_service.storage.nodes import TOPOLOGY_ERRORS


async def hand_over_all(groups: list[int], hand_over: Callable[[int, bool], Awaitable[None]],
                        log: logging.Logger) -> None:
    """Each of ``groups`` handed over (``hand_over(group, snapshot)``), one after another; once one finds
    Redis not answering, the rest at once and without final snapshots — their logs hold everything
    acknowledged, the next owner replays more — not each waiting out a snapshot's timeout then a
    RELEASE's in turn (16 groups at the default 2 s: past the bound ``serve`` gives a stop). A group
    not handed over keeps its lease until it runs out."""
    away = False
    for n, group in enumerate(groups):
        batch = groups[n:] if away else [group]
        ends = await asyncio.gather(*(hand_over(g, not away) for g in batch), return_exceptions=True)
        for other, end in zip(batch, ends, strict=True):
            if isinstance(end, BaseException) and not isinstance(end, (*STORAGE_ERRORS, Fenced)):
                raise end  # a bug: the stop's caller hears it, as before
            if end is not None:
                log.warning("group %d: not handed over (%r); its lease runs out instead", other, end)
                away = away or not isinstance(end, Fenced)  # Fenced: taken by another, and Redis answers
        if len(batch) > 1:
            return


async def first_share(balance: Callable[[], Awaitable[None]], holds: Callable[[], bool], log: logging.Logger) -> None:
    """A start's first balance (``Membership.start``, whose ``retrying`` waits for Redis): a taking Redis refused
    where the process holds a group (``holds()``) is left to the later balances, as each later refusal is. Waited
    out, a group whose slot migrates (ASK, TRYAGAIN; for good, a reshard left half-done) held the start for as long:
    the groups taken were held and renewed, never served (health NOT_SERVING, every call refused, forwarded ones
    too), and no other process took them. Where none is held, Redis is away for this process: waited out."""
    try:
        await balance()
    except STORAGE_ERRORS as exc:
        if not holds():
            raise
        log.warning("starting: a taking refused (%r); the groups taken are served, the others taken by a later "
                    "balance", exc, extra={"event": "taking_refused"})


NOT_RECOVERED_LOG_S = 60.0
"""How often a group whose takings all fail alike is said, at most (each failed taking is counted in between)."""

NOT_RECOVERED_GROUPS_KEPT = 4096
"""Groups whose last line's time is remembered, at most (the least recently said forgotten first)."""


class NotRecovered:
    """What a taking whose recovery failed says: a stop's cancel is nothing gone wrong, Redis not answering (or
    between primaries) a fault a later balance gets past, anything else an error — a log this version cannot
    read, Redis refusing the reads (an ACL changed while the service runs: every taking fails alike), a bug.
    Every process takes such a group again at each balance pass (a third of a lease): said each time, one
    damaged snapshot filled every process's log with an ERROR and its traceback every few seconds. Said once
    per group per ``interval_s``, the line counting the takings left unsaid since (``left_out``). Each one is
    counted (``failures``, by ``failure_reason``), said or not: the group is served by no process meanwhile. A
    taking another process won while it recovered (``Fenced``) is no failure: said as a warning, not counted."""

    def __init__(self, log: logging.Logger, failures: Counter, interval_s: float = NOT_RECOVERED_LOG_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log, self._due = log, OncePerKey(interval_s, NOT_RECOVERED_GROUPS_KEPT, clock)
        self._unsaid: dict[int, int] = {}
        self._failures = failures
        self._last: BaseException | None = None  # the failure said last (``said_last``)

    def said_last(self) -> BaseException | None:
        """The failure said last, forgotten here (its frames are not kept): a failure a balance's taking raises is
        said once, by its recovery, or by the balance where it came before (a bug taking the lease)."""
        last, self._last = self._last, None
        return last

    def say(self, group: int, exc: BaseException) -> None:
        self._last = exc
        if isinstance(exc, asyncio.CancelledError):
            self._log.info("group %d: taken, its recovery cancelled by a stop; given back", group)
            return
        if isinstance(exc, Fenced):  # no failure: a newer taking won the group (its lease lapsed here meanwhile)
            self._log.warning("group %d: taken over by another process while it was recovered; not served here (%s)",
                              group, exc, extra=lost_in_recovery(group))
            return
        self._failures.labels(failure_reason(exc)).inc()
        if not self._due.due(str(group)):
            self._unsaid[group] = self._unsaid.get(group, 0) + 1
            return
        left_out = self._unsaid.pop(group, 0)
        if _unanswered(exc):
            self._log.warning("group %d: taken but not recovered (Redis: %r); given back, to be taken at a later "
                              "balance (%d more such takings since the last line)", group, exc, left_out,
                              extra={"event": "group_not_recovered", "group": group, "left_out": left_out})
        else:
            self._log.error("group %d: taken but not recovered; given back (%d more such takings since the last "
                            "line)", group, left_out, exc_info=exc, extra={"group": group, "left_out": left_out})


def lost_in_recovery(group: int) -> dict[str, object]:
    """The log fields of a taking another process won while it was recovered (``group_lost_in_recovery``)."""
    return {"event": "group_lost_in_recovery", "group": group}


def failure_reason(exc: BaseException) -> str:
    """``metrics.RECOVERY_FAILURE_REASONS``' class of a recovery's failure: refused for its data (R7, E10), Redis's
    doing (not answering, or refusing the reads: an ACL), or a bug."""
    if isinstance(exc, UNRECOVERABLE):
        return "data"
    return "redis" if isinstance(exc, (*STORAGE_ERRORS, Fenced)) else "bug"


def _unanswered(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis did not answer, or not yet (loading, a failover, a slot moving): not a refusal."""
    if isinstance(exc, (AuthenticationError, AuthorizationError)):
        return False  # a ConnectionError in redis-py, but a refusal no wait cures
    return isinstance(exc, (*TOPOLOGY_ERRORS, ReadOnlyError, RedisClusterException))


__all__ = ["NOT_RECOVERED_LOG_S", "NotRecovered", "failure_reason", "first_share", "hand_over_all", "lost_in_recovery"]
