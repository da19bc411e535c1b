"""Facts read from the input streams sent to the processes owning their groups, one owner at a time.

An owner that does not answer (paused, cut off from the other processes while Redis still answers)
must not hold up the reading of every process: each send waits up to its timeout, and almost every
batch holds facts for every owner. So an owner whose last send failed is skipped — its facts left
``Moved``, their entries pending — until a growing wait has passed (``OWNER_RETRY``), and then one
send alone tries it again while the other batches still skip it. Each owner's failure is its own:
an error of one send (an answer of the wrong length included) leaves just that owner's facts pending.
A fact the owner answers ``Moved`` (its group handed over, or not recovered there yet) is left pending
alone: the owner answered, and is not skipped for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from atp_service.intake.facts import Result
from atp_service.retry import Backoff, BackoffPolicy
from atp_service.tasks import exception_seen, keep
from reservation import DomainError, Fact, Moved, Unavailable

log = logging.getLogger(__name__)
FactSender = Callable[[str, Sequence[Fact]], Awaitable[list[Result | DomainError]]]
"""Sends facts to the service process at an address (the owner of their groups), which applies
them: each fact's result there, in order, or the refusal that left it undecided."""
OWNER_RETRY = BackoffPolicy(first_s=0.2, max_s=5.0)
"""Waits during which an owner whose last send failed is skipped (its facts stay pending)."""
MAX_FAILING_OWNERS = 64
"""Owners whose failure (and wait) one reader remembers; past it the one that failed least recently
is forgotten, and tried at once the next time facts go to it. A process that left the keyspace
failing (a rolling restart, a pod given a new address) is sent nothing again, so it never answers
again either: one entry each, kept for good, grew with every deploy of a service that runs for weeks."""


class OwnerSends:
    """The sends of one reader, with each owner's state: when it may be tried again after a failure."""

    def __init__(self, send: FactSender, max_failing: int = MAX_FAILING_OWNERS) -> None:
        self._send = send
        self._max_failing = max_failing
        self._failing: dict[str, Backoff] = {}
        self._retry_at: dict[str, float] = {}
        self._probing: set[str] = set()
        self._tries: set[asyncio.Task[list[Result | DomainError] | None]] = set()

    def due(self, owner: str) -> bool:
        """Whether facts for this owner are sent now: it answered last time, or its wait has passed
        and no other send is trying it already."""
        if owner not in self._failing:
            return True
        return owner not in self._probing and time.monotonic() >= self._retry_at[owner]

    async def to_owners(self, facts: list[Fact], results: list[Result | DomainError], at: Sequence[int],
                        wait: bool = True) -> None:
        """The facts at ``at`` (each ``Moved`` to its owner) sent to their owners, all at once: each
        result becomes the owner's. One whose owner is skipped, or whose send failed, keeps a refusal.
        ``wait`` False (the caller is the reading loop itself: a pass over the reader's pending entries):
        a failed owner tried again is not waited for — the try goes on alone, its facts left pending
        (read again, and a duplicate then where the owner applied them, E8). Waited for, a paused
        owner's try held up every read for its whole timeout, again at each try."""
        by_owner: dict[str, list[int]] = {}
        for i in at:
            result = results[i]
            if isinstance(result, Moved) and result.owner:
                by_owner.setdefault(result.owner, []).append(i)
        owners = [owner for owner in by_owner if self.due(owner)]
        self._probing.update(owner for owner in owners if owner in self._failing)  # one try at a time each
        if not wait:
            for owner in [owner for owner in owners if owner in self._probing]:
                keep(self._tries, self._one(owner, [facts[i] for i in by_owner[owner]])).add_done_callback(
                    exception_seen)
            owners = [owner for owner in owners if owner not in self._probing]
        answers = await asyncio.gather(*(self._one(owner, [facts[i] for i in by_owner[owner]]) for owner in owners))
        for owner, answer in zip(owners, answers, strict=True):
            if answer is not None:
                for i, result in zip(by_owner[owner], answer, strict=True):
                    results[i] = result

    async def _one(self, owner: str, facts: list[Fact]) -> list[Result | DomainError] | None:
        """One owner's answer, or None (its facts stay as they are) if the send failed in any way."""
        try:
            answer = await self._send(owner, facts)
            if len(answer) != len(facts):
                raise ValueError(f"{len(answer)} results for {len(facts)} facts")
        except Exception as exc:  # any error of one owner's send is that owner's alone
            log.warning("input streams: sending %d facts to %s failed (%r); they stay pending", len(facts), owner, exc)
            self._failed(owner)
            return None
        finally:
            self._probing.discard(owner)
        if any(isinstance(result, Unavailable) and not isinstance(result, Moved) for result in answer):
            self._failed(owner)  # a fact of a group not served there (``Moved``) says nothing of the owner
        else:
            self._failing.pop(owner, None)
            self._retry_at.pop(owner, None)
        return answer

    @property
    def tries(self) -> list[asyncio.Task[list[Result | DomainError] | None]]:
        """The tries under way that no one waits for (``to_owners``): the reader's stop ends them."""
        return list(self._tries)

    def _failed(self, owner: str) -> None:
        backoff = self._failing.pop(owner, None) or Backoff(OWNER_RETRY)
        self._failing[owner] = backoff  # the most recent failure last: the first forgotten failed longest ago
        self._retry_at[owner] = time.monotonic() + backoff.next_delay()
        while len(self._failing) > self._max_failing:
            gone = next(iter(self._failing))
            del self._failing[gone], self._retry_at[gone]
