"""Reservation id claims (``ownership = leases``): which group holds the record of an id, in Redis.

With several processes, a reservation's record lives in its home group (the lowest group among its
lines), and a process knows only the ids of the groups it serves. A Reserve reusing an id with lines
of another home group would reach another process, which would make a second record of the id. So
before a process decides a Reserve of an id it does not know, it claims the id (R5 across processes):
``<prefix>rid:{<id>}`` is set to the home group unless it holds a value already, and the value it
holds is the answer. An equal value is the same record place, whoever wrote it (a retry, a concurrent
attempt, a former owner of the group): the home decides as in one process. Another value means the id
names a record of other lines: the Reserve is refused before anything is held (``engine.ids``).

The key's hash tag is the id itself, so the claims spread over a Redis Cluster's slots (none is in a
group's slot: an id's home is what the claim tells, not where it is found). One script call per id
(``CLAIM_SCRIPT``): read, set if missing, and extend its time to live to at least what was asked. It
changes nothing of a value already there, so a call sent again after its answer was lost (in doubt,
R7) settles it: the value it returns is the one stored, whether the lost call set it or another did.
Calls asked for in one event-loop turn go together, one round trip per node (``Nodes.run``, with
``WAIT`` where replicas must confirm). A call not answered is sent again, ``CLAIM_TRIES`` times in
all; then the Reserve is refused UNAVAILABLE (retryable, nothing decided). One Redis refused ``OOM``
(at its ``maxmemory``) is not sent again: refused before it wrote, it is certainly not made.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import ResponseError

from atp_service.retry import Backoff, BackoffPolicy
from atp_service.storage.keys import Keyspace
from atp_service.storage.nodes import Call, Script
from atp_service.storage.resp import as_text, out_of_memory
from atp_service.tasks import keep

# KEYS: the id's claim; ARGV: home group, time to live in ms (0: looked at only, -1 where none is held).
# Returns the group the claim holds.
CLAIM_SCRIPT = Script("""
local held = redis.call('GET', KEYS[1])
if not held then
  if ARGV[2] == '0' then
    return '-1'
  end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if held == ARGV[1] and redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return held
""")
CLAIM_TRIES = 3
"""Script calls sent for one batch of claims before the Reserves wait no longer (UNAVAILABLE)."""
CLAIM_RETRY = BackoffPolicy(first_s=0.05, max_s=0.5)
Run = Callable[[list[Call]], Awaitable[list[Any]]]
"""``Nodes.run``: each call's reply, or the exception it ended in."""


class IdClaims:
    """Claims of reservation ids, batched per event-loop turn (``claim``)."""

    def __init__(self, run: Run, keys: Keyspace, tries: int = CLAIM_TRIES) -> None:
        self._run, self._keys, self._tries = run, keys, tries
        self.retry: BackoffPolicy | None = CLAIM_RETRY
        """The waits between tries; None: none but the next event-loop turn (the simulation never sleeps)."""
        self._waiting: list[tuple[Call, asyncio.Future[int]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.round_trips = 0
        """Script rounds sent (each one round trip per node): what batching saves is read here."""

    def key(self, reservation_id: str) -> str:
        return self._keys.reservation_id(reservation_id)

    def claim(self, reservation_id: str, home: int, ttl_ms: int) -> asyncio.Future[int]:
        """The group ``reservation_id``'s claim holds once this one is made: ``home``, unless another
        group claimed it first. The claim lives at least ``ttl_ms`` from now. Fails with what the last
        try met (a ``RedisError``, ``OSError``) when Redis did not answer ``CLAIM_TRIES`` times."""
        return self._ask(reservation_id, home, max(1, ttl_ms))

    def look(self, reservation_id: str) -> asyncio.Future[int]:
        """The group ``reservation_id``'s claim holds, -1 where none: nothing set or extended (a Reserve
        refused before its claim still names the field an id of another record differs in, R5)."""
        return self._ask(reservation_id, -1, 0)

    def _ask(self, reservation_id: str, home: int, ttl_ms: int) -> asyncio.Future[int]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._flush)
        self._waiting.append((Call(CLAIM_SCRIPT, [self.key(reservation_id)], [home, ttl_ms]), fut))
        return fut

    def _flush(self) -> None:
        batch, self._waiting = self._waiting, []
        keep(self._tasks, self._send(batch))  # its own task: a caller that stops waiting stops nothing

    async def _send(self, batch: list[tuple[Call, asyncio.Future[int]]]) -> None:
        """Each claim answered: the value its call returned, or (tries spent) the error of its last try.
        Ended early (cancelled, a reply that names no group), the claims still unanswered fail: no
        Reserve waits for good on a claim nobody sends any more."""
        try:
            await self._tries_of(batch)
        finally:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(ConnectionError("the claim was given up before Redis answered it"))

    async def _tries_of(self, batch: list[tuple[Call, asyncio.Future[int]]]) -> None:
        backoff = Backoff(self.retry) if self.retry is not None else None
        left = batch
        for attempt in range(self._tries):
            if attempt:
                await asyncio.sleep(backoff.next_delay() if backoff is not None else 0)
            self.round_trips += 1
            try:
                replies = await self._run([call for call, _ in left])
            except Exception as exc:  # whatever it was: every call of the round unanswered
                replies = [exc] * len(left)
            failed = []
            for (call, fut), reply in zip(left, replies, strict=True):
                if fut.done():
                    continue
                if not isinstance(reply, BaseException):
                    _settle(fut, call, reply)
                elif attempt + 1 == self._tries or out_of_memory(reply):  # refused OOM: certainly not made
                    fut.set_exception(reply)
                else:
                    failed.append((call, fut))  # in doubt or not sent: sent again, which settles it
            left = failed
            if not left:
                return

    async def stop(self) -> None:
        """Until the claims under way have ended (each within its tries)."""
        if self._tasks:
            await asyncio.wait(self._tasks)

    def abandon(self) -> None:
        """At teardown: the sends under way given up, their claims failed as not answered (``_send``)."""
        for task in self._tasks:
            task.cancel()


def _settle(fut: asyncio.Future[int], call: Call, reply: Any) -> None:
    """The group a claim holds; a value no claim writes (set by hand, another program) is an error, not
    a group: the Reserve is refused as not answered rather than decided on it."""
    try:
        fut.set_result(int(as_text(reply)))
    except ValueError:
        fut.set_exception(ResponseError(f"{call.keys[0]} holds {reply!r}, not a shard group"))


__all__ = ["CLAIM_SCRIPT", "CLAIM_TRIES", "IdClaims"]
