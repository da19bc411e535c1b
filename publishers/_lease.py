"""One delivering publisher per (channel, consumer group): a lease in Redis, and the fence of its records.

Two publishers in one group (a rolling update overlaps pods, all named ``publisher-1`` by default)
would split the stream's entries between them, and each would skip "already delivered" versions
by its own memory: one could deliver v10 (5 units) after the other delivered v11 (0 units), and the
destination would sell 5 units that are gone (C3, C4). So a publisher delivers only while it holds
the lease ``<stream>:lease:<group>``:

- **Taken** with ``SET key token NX PX lease`` (a random token per process), **renewed** every fifth
  of its duration (counted from each renewal's send) by a script that extends it only while it still
  holds that token, and **released** (token-checked ``DEL``) when the publisher stops. Any other
  publisher of the group is a standby: it tries again every ``retry_s`` and takes over once the
  lease is released or has lapsed (a holder killed, paused or cut off from Redis).
- **Sends** are bounded: before each request to the destination the holder checks on its own clocks
  (measured from before each renewal was sent, so never late; every clock of the host, ``LeaseClock``)
  that ``COUNTED_SHARE`` of its lease covers one more request (``send_timeout_s``). A holder paused or
  suspended past its lease wakes up refusing to send.
- **Records** are fenced: the delivered versions, the acknowledgements and the redelivery
  bookkeeping are written by scripts that first check the token and keep the highest version per
  key, so a paused old holder's late record never overwrites a newer one.

What cannot be fenced is a request already written to the destination when its sender pauses: see
docs/CHANNELS.md "One publisher per destination".
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from atp_service.lease_clock import LeaseClock
from atp_service.storage.resp import as_text

RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
SETTLE = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
local ids_from = 4 + 2 * tonumber(ARGV[3])
for i = 4, ids_from - 1, 2 do
  local old, new = redis.call('hget', KEYS[2], ARGV[i]), ARGV[i + 1]
  if not old or #old < #new or (#old == #new and old < new) then redis.call('hset', KEYS[2], ARGV[i], new) end
end
for i = ids_from, #ARGV, 500 do
  redis.call('xack', KEYS[3], ARGV[2], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
return 1
"""
"""Under the lease only: each key's delivered version raised (never lowered: versions are decimal
integers, compared by length then digits, exact past 2^53), then the entries acknowledged."""
FORGET = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return -1 end
local n = 0
for i = 2, #ARGV, 500 do n = n + redis.call('hdel', KEYS[2], unpack(ARGV, i, math.min(i + 499, #ARGV))) end
return n
"""
DELETE_IF_SAME = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('get', KEYS[2]) == ARGV[2] then return redis.call('del', KEYS[2]) end
return 0
"""
RENEWALS_PER_LEASE = 5
"""Renewals tried within one lease's duration. A holder counts on ``COUNTED_SHARE`` of it from each renewal's send and
a request needs ``send_timeout_s`` (at most a third of the lease) of that: with a renewal due a fifth after the last
one's send (``renewal_due_in``), one may fail outright, or each take up to a fifth of the lease, and sends go on; four
may fail before Redis lets it lapse."""
COUNTED_SHARE = 0.8
"""The share of a lease a holder counts on, from when its renewal was sent (the service's ``SAFETY``): Redis ends the
lease by its own clock, which may run ahead of this host's or be stepped forward. Counted whole, a standby could take
the lease while the holder's last request was still on its way."""


class LeaseLapsing(Exception):
    """This publisher's lease does not cover one more request to the destination: nothing is sent."""


SEND_GUARD: ContextVar[Callable[[], None] | None] = ContextVar("atp_publisher_send_guard", default=None)
"""Called before each request to a destination (``_http``): raises ``LeaseLapsing`` when the
delivering publisher's lease does not cover it. A context variable, so that every adapter's
requests (a Shopify batch makes several, a ``Retry-After`` sends again) are checked without the
adapters knowing of leases."""


def check_send() -> None:
    guard = SEND_GUARD.get()
    if guard is not None:
        guard()


class Lease:
    """The lease of one (channel, group). ``clock``: seconds on every clock of the host (``LeaseClock``): a pause or
    a suspend that any of them counted counts. On ``time.monotonic`` alone, a holder suspended past its lease
    (``CLOCK_MONOTONIC`` stands still through a suspend) woke still sending, beside the standby that took over."""

    def __init__(self, client: Any, key: str, lease_s: float, send_timeout_s: float,
                 clock: Callable[[], float] | None = None) -> None:
        self.client, self.key = client, key
        self.lease_s, self.send_timeout_s = lease_s, send_timeout_s
        self.token = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(8)}"
        """Names its holder for an operator (``GET`` the key) and can never be guessed by another."""
        self._clock = clock or LeaseClock().now
        self._valid_until = 0.0
        self._tried = 0.0
        """When the last renewal (or taking) was sent, by ``clock``: the next is due ``renew_every_s`` after it."""
        self.held = False
        self._unrecorded: dict[str, int] = {}
        """Versions delivered whose record is not known written (``settle``): at most one per key."""

    @property
    def renew_every_s(self) -> float:
        return self.lease_s / RENEWALS_PER_LEASE

    def renewal_due_in(self) -> float:
        """Seconds until the next renewal is due: ``renew_every_s`` after the last one was *sent*, not answered —
        counted after the answer, a slow renewal's delay counted twice against the share of the lease it covers."""
        return max(0.0, self._tried + self.renew_every_s - self._clock())

    @property
    def retry_s(self) -> float:
        """How often a standby tries to take the lease: a released one is taken within it."""
        return min(1.0, self.renew_every_s)

    async def take(self) -> bool:
        """True: this publisher holds the lease now (taken, or still its own and renewed)."""
        sent = self._tried = self._clock()
        if await self.client.set(self.key, self.token, nx=True, px=self.lease_ms):
            self._valid_until, self.held = sent + self.lease_s * COUNTED_SHARE, True
            return True
        return await self.renew()

    async def renew(self) -> bool:
        """Extend the lease while it is still this publisher's; False: it is not (the caller drops it)."""
        sent = self._tried = self._clock()
        if int(await self.client.eval(RENEW, 1, self.key, self.token, self.lease_ms)):
            self._valid_until, self.held = sent + self.lease_s * COUNTED_SHARE, True
            return True
        return False

    async def release(self) -> None:
        """Give the lease up for a standby to take at once (a stop); only while still this publisher's."""
        self.held = False
        await self.client.eval(RELEASE, 1, self.key, self.token)

    def drop(self) -> None:
        """Stop counting on the lease (lost, or lapsing): nothing more is sent or recorded under it."""
        self.held = False

    async def holder(self) -> str:
        """Who holds the lease now (its token: host/pid/random), or '' when nobody does."""
        value = await self.client.get(self.key)
        return "" if value is None else as_text(value)

    def covers(self, seconds: float) -> bool:
        """Held, and by this publisher's own clock still for ``seconds`` more, within ``COUNTED_SHARE`` of the lease
        from the renewal's send."""
        return self.held and self._clock() + seconds < self._valid_until

    def check_send(self) -> None:
        """Before a request to the destination: it must end (``send_timeout_s``) before the lease can lapse."""
        if not self.covers(self.send_timeout_s):
            raise LeaseLapsing(f"the lease {self.key} does not cover a request of up to {self.send_timeout_s:g} s")

    @property
    def lease_ms(self) -> int:
        return max(1, round(self.lease_s * 1000))

    # -- records fenced by the token --------------------------------------------------
    def delivered(self, versions: dict[str, int]) -> None:
        """``versions`` delivered (the destination answered), owed to the next record (``settle``) whatever becomes of
        the read that sent them: one taken again after a Redis error skips them (known delivered), and its record
        without them stayed below what the destination held."""
        owed = self._unrecorded
        for key, version in versions.items():
            if version > owed.get(key, 0):
                owed[key] = version

    async def settle(self, delivered_key: str, stream: str, group: str, delivered: dict[str, int],
                     ids: list[str]) -> bool:
        """Raise the delivered versions and acknowledge ``ids``, under the lease. False: fenced off
        (another publisher holds it): nothing written. The versions of a record not known written (its answer lost, or
        fenced off) go with the next one: a read tried again skips what was delivered (C3), and acknowledged only,
        the record in Redis stayed below what the destination holds (a next start delivered it again)."""
        owed = self._unrecorded
        for key, version in delivered.items():
            owed[key] = max(version, owed.get(key, 0))
        pairs = [part for key, version in owed.items() for part in (key, str(version))]
        keys = (self.key, delivered_key, stream)
        if int(await self.client.eval(SETTLE, 3, *keys, self.token, group, len(owed), *pairs, *ids)) != 1:
            return False
        self._unrecorded = {}
        return True

    async def forget(self, hash_key: str, fields: list[str]) -> bool:
        """HDEL ``fields`` under the lease (keys owed a redelivery, settled). False: fenced off."""
        return int(await self.client.eval(FORGET, 2, self.key, hash_key, self.token, *fields)) >= 0

    async def delete_if_same(self, key: str, value: Any) -> bool:
        """Delete ``key`` if it still holds ``value`` (a mark not raised since), under the lease.
        False: fenced off."""
        return int(await self.client.eval(DELETE_IF_SAME, 2, self.key, key, self.token, value)) >= 0
