"""Facts read from the input streams sent to the processes owning their groups, one owner at a time.

An owner that does not answer (paused, cut off from the other processes while Redis still answers)
must not hold up the reading of every process: each send waits up to its timeout, and almost every
batch holds facts for every owner. So an owner whose last send failed is skipped — its facts left
``Moved``, their entries pending — until a growing wait has passed (``OWNER_RETRY``), and then one
send alone tries it again while the other batches still skip it. Each owner's failure is its own:
an error of one send (an answer of the wrong length included) leaves just that owner's facts pending.
A fact the owner answers ``Moved`` (its group handed over, or not recovered there yet) is left pending
alone: the owner answered, and is not skipped for it. Nor for a group whose shard refused its facts there
(``GroupRefused``: a write in doubt, its Redis Cluster primary down, its queue full): that group alone is
skipped at that owner, as a failing owner is, and tried again by one send of its facts alone; the facts of
the owner's other groups go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from atp_service.engine.clock import Ticks
from atp_service.intake.facts import Result
from atp_service.intake.quarantine import Acks
from atp_service.retry import Backoff, BackoffPolicy
from atp_service.tasks import exception_seen
from reservation import DomainError, Fact, Moved, Reason, Unavailable

log = logging.getLogger(__name__)
FactSender = Callable[[str, Sequence[Fact]], Awaitable[list[Result | DomainError]]]
"""Sends facts to the service process at an address (the owner of their groups), which applies
them: each fact's result there, in order, or the refusal that left it undecided."""
OWNER_RETRY = BackoffPolicy(first_s=0.2, max_s=5.0)
"""Waits during which an owner whose last send failed (or a group its shard refused there) is skipped
(its facts stay pending)."""
MAX_FAILING_OWNERS = 64
"""Owners (and groups at an owner) whose failure (and wait) one reader remembers; past it the one that
failed least recently is forgotten, and tried at once the next time facts go to it. A process that left
the keyspace failing (a rolling restart, a pod given a new address) is sent nothing again, so it never
answers again either: one entry each, kept for good, grew with every deploy of a service that runs for weeks."""
Key = tuple[str, int | None]
"""What is skipped while it fails: an owner (None), or one group at that owner."""
SENDER_WRITES_KEY = "atp-quarantine-by-sender"
"""Metadata of facts read from an input stream sent to their groups' owner (``edge.record.fact_sender``): the owner
neither writes those it quarantines to the quarantine stream nor counts them; the reader does, each with its
entry's XACK in one script (``quarantined_there``; E8: decided once). Taken from a forwarded call alone; an owner
that does not know it writes them, and the reader's write is then a duplicate (the digest) that acknowledges all
the same."""
SENDER_WRITES = ((SENDER_WRITES_KEY, "1"),)
Answer = list[Result | DomainError] | None
"""A send's answer: each fact's result there, or None where the send failed (its facts stay as they are)."""
QuarantinedThere = Callable[[Sequence[Fact], list[Result | DomainError], Sequence[int], Acks], Awaitable[None]]
"""Writes the facts at the indexes their owners answered QUARANTINED to the quarantine stream here, each with
its input entry's acknowledgement (``FactDesk.quarantined_there``): the send asked the owner not to (E8)."""


class GroupRefused(Unavailable):
    """An owner's refusal of one group's facts for that group's trouble alone there (its shard's write in
    doubt, its Redis Cluster primary down, its queue full): the owner answered, the facts stay pending."""

    def __init__(self, group: int, message: str, reason: Reason) -> None:
        super().__init__(message, reason, metadata={"group": str(group)})
        self.group = group


class OwnerSends:
    """The sends of one reader, with each owner's state: when it may be tried again after a failure.
    ``ticks``: the clock its waits are measured on."""

    def __init__(self, send: FactSender, quarantined_there: QuarantinedThere | None = None,
                 max_failing: int = MAX_FAILING_OWNERS, ticks: Ticks = time.monotonic) -> None:
        self._send, self._ticks = send, ticks
        self._quarantined_there = quarantined_there
        self._max_failing = max_failing
        self._failing: dict[Key, Backoff] = {}
        self._retry_at: dict[Key, float] = {}
        self._probing: set[Key] = set()
        self._tries: set[asyncio.Task[Answer]] = set()

    def due(self, owner: str, group: int | None = None) -> bool:
        """Whether facts for this owner (of this group, if given) are sent now: it answered last time, or
        its wait has passed and no other send is trying it already."""
        key = self._key(owner, group)
        return key not in self._failing or (key not in self._probing and self._ticks() >= self._retry_at[key])

    def _key(self, owner: str, group: int | None) -> Key:
        """What a send of the group's facts is skipped for: the group at the owner while its shard refused
        them there (the owner answering); else the owner — while it fails, its try takes every group's."""
        key = (owner, group)
        return key if key in self._failing and (owner, None) not in self._failing else (owner, None)

    async def to_owners(self, facts: list[Fact], results: list[Result | DomainError], at: Sequence[int],
                        wait: bool = True, acks: Acks | None = None) -> None:
        """The facts at ``at`` (each ``Moved`` to its owner) sent to their owners, all at once: each
        result becomes the owner's. One whose owner (or group there) is skipped, or whose send failed,
        keeps a refusal. The facts of a group refused at its owner go in a send of their own.
        ``wait`` False (the caller is the reading loop itself: a pass over the reader's pending entries):
        a failed owner (or group) tried again is not waited for — the try goes on alone, its facts left
        pending (read again, and a duplicate then where the owner applied them, E8). Waited for, a paused
        owner's try held up every read for its whole timeout, again at each try. ``acks``: the facts' input
        entries; the facts their owners quarantined are written to the quarantine stream here, each with its
        entry's acknowledgement (``quarantined_there``): their results then are what that write made of them."""
        sends: dict[Key, list[int]] = {}
        groups: dict[Key, set[int]] = {}
        for i in at:
            result = results[i]
            if isinstance(result, Moved) and result.owner:
                key = self._key(result.owner, result.group)
                sends.setdefault(key, []).append(i)
                groups.setdefault(key, set()).add(result.group)
        keys = [key for key in sends if self.due(*key)]
        tries = {key for key in keys if key in self._failing}  # one try at a time each
        self._probing.update(tries)
        started = {key: self._start(key, [facts[i] for i in sends[key]], groups[key], key in tries) for key in keys}
        if not wait:
            for key in tries:  # their answers go nowhere: the facts stay pending, read again
                task = started.pop(key)
                self._tries.add(task)
                task.add_done_callback(self._tries.discard)
                task.add_done_callback(exception_seen)
        answers = await asyncio.gather(*started.values())
        for key, answer in zip(started, answers, strict=True):
            if answer is not None:
                for i, result in zip(sends[key], answer, strict=True):
                    results[i] = result
        if acks is not None and self._quarantined_there is not None:
            await self._quarantined_there(facts, results, at, acks)

    def _start(self, key: Key, facts: list[Fact], groups: set[int], trying: bool) -> asyncio.Task[Answer]:
        """The send in a task; a try (``trying``) marked under way until the task ends however it ends —
        cancelled before it began included: a mark left behind would skip that owner (or group) for good."""
        task = asyncio.ensure_future(self._one(key, facts, groups))
        if trying:
            task.add_done_callback(lambda _task: self._probing.discard(key))
        return task

    async def _one(self, key: Key, facts: list[Fact], groups: set[int]) -> Answer:
        """One send's answer, or None (its facts stay as they are) if the send failed in any way. ``groups``:
        the groups of its facts (as the reader routed them)."""
        owner = key[0]
        try:
            answer = await self._send(owner, facts)
            if len(answer) != len(facts):
                raise ValueError(f"{len(answer)} results for {len(facts)} facts")
        except Exception as exc:  # any error of one owner's send is that owner's alone
            log.warning("input streams: sending %d facts to %s failed (%r); they stay pending", len(facts), owner, exc)
            self._failed((owner, None))
            return None
        if any(isinstance(result, Unavailable) and not isinstance(result, (Moved, GroupRefused)) for result in answer):
            self._failed((owner, None))  # a fact of a group not served there (``Moved``) says nothing of the owner
            return answer
        refused = {result.group for result in answer if isinstance(result, GroupRefused)}
        self._answered((owner, None))  # nor one its shard refused: the owner answered
        for group in groups - refused:
            self._answered((owner, group))
        for group in refused:
            self._failed((owner, group))
        return answer

    @property
    def tries(self) -> list[asyncio.Task[Answer]]:
        """The tries under way that no one waits for (``to_owners``): the reader's stop ends them."""
        return list(self._tries)

    def _answered(self, key: Key) -> None:
        self._failing.pop(key, None)
        self._retry_at.pop(key, None)

    def _failed(self, key: Key) -> None:
        backoff = self._failing.pop(key, None) or Backoff(OWNER_RETRY)
        self._failing[key] = backoff  # the most recent failure last: the first forgotten failed longest ago
        self._retry_at[key] = self._ticks() + backoff.next_delay()
        while len(self._failing) > self._max_failing:
            gone = next(iter(self._failing))
            del self._failing[gone], self._retry_at[gone]
