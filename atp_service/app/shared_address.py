"""A leased process's advertised address is its own (``ownership = leases``): the address is how every
other process, and every routing client, names and reaches it.

Two live processes advertising one address (each replica of a deployment given the same
``advertise_address``: a load-balanced service name, a copied setting) each counted the other as
itself: a process's routes treat a group held at its own address as one it no longer serves, and
the shares count one process where two run. So both took groups, and the groups of the one the
address does not reach answered nobody, for good — calls for them forwarded to the address met the
other process, which refused them ``GROUP_MOVED`` naming no owner, and ``GetRouting`` sent routing
clients there too — with nothing said anywhere. A start finding another live process at its address
refuses instead (``StartupError``: exit status 2), before it takes any group.

Live is proven by Redis, not by time: a process's entry in the members (``MEMBERS_SCRIPT``)
is renewed every third of a lease, its score (its expiry, by Redis's clock) rising each time. An entry
at this address that rises, or that appears, is a live process's. One that is left as it is belongs
to a process that stopped renewing — killed, or paused, and restarted here — and Redis drops it once
its score passes (this start's own renewals remove expired entries), so a restart at the same address
waits at most a lease for its predecessor's entry to go, and goes on.

A read counts only once this process's own entry is in the members. Each start registers before it
reads, so of two processes starting at once at one address the one that reads later finds the other.
A start whose registration did not land (Redis away a moment: its renewals register it soon) found the
address free as well as the other did: both served.

After the start (``SharedAddressWatch``), a process whose entry lapsed (paused past a lease) and that
finds another at its address when it renews again, registered there meanwhile, stops: the later of the two.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from atp_service.app.balancing import RENEW_RETRY_FIRST_S, address_of
from atp_service.app.keyspace import StartupError
from atp_service.retry import Backoff, BackoffPolicy
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.log import LogStore
from atp_service.storage.nodes import Script
from atp_service.storage.resp import as_text

log = logging.getLogger(__name__)

# KEYS: members; ARGV: entry, ttl ms (0: leave), an entry of the process's to remove ('': none), '0' where the
# last call's answer was lost. Redis's own clock times the entries out (the processes' clocks need not agree).
# Returns {1 where the entry was new, the live members}. An entry added anew keeps half a ms on its score until
# a call whose sender heard the last answer renews it: a call that added it, its answer lost, is told by the next.
MEMBERS_SCRIPT = Script("""
local t, added = redis.call('TIME'), 0
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if tonumber(ARGV[2]) > 0 then
  local was = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if not was or (ARGV[4] == '0' and tonumber(was) % 1 ~= 0) then added = 1 end
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]) + added / 2, ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
if ARGV[3] and ARGV[3] ~= '' then redis.call('ZREM', KEYS[1], ARGV[3]) end
return {added, redis.call('ZRANGE', KEYS[1], 0, -1)}
""")

LOOKS_PER_LEASE = 6
"""How often the members are read while an entry at this address is waited out: twice per renewal
of a live process, so its first renewal is seen within half a renewal period."""


def others_at(members: list[tuple[Any, float]], address: str, holder: str) -> dict[str, float]:
    """The member entries (with their scores) at ``address`` that are not this process's (``holder``, or
    ``holder.<hex>`` once registered anew)."""
    return {entry: score for entry, score in ((as_text(m), s) for m, s in members)
            if _another_at(entry, address, holder)}


def _another_at(entry: str, address: str, holder: str) -> bool:
    """Whether member ``entry`` is another process's at ``address``."""
    return address_of(entry) == address and not _own(entry, holder)


def _own(entry: str, holder: str) -> bool:
    return entry == holder or entry.startswith(holder + ".")


async def refuse_if_shared(store: LogStore, address: str, holder: str, lease_ms: int) -> None:
    """Returns once no other live process advertises ``address``; raises ``StartupError`` where one does.
    Waits while an entry of another process there is neither renewed nor gone: at most a lease, the time
    Redis keeps the entry of a process that stopped renewing, looked at twice per renewal. A look that proves
    nothing yet — Redis not answering, or this process's own entry not in (its first registration not answered:
    its renewals make it within ``RENEW_RETRY_FIRST_S``, doubling) and nothing at its address to wait out — is
    made again as soon, not a sixth of a lease later: the start was held that long for nothing (100 s at a
    lease of 600 s)."""
    seen: dict[str, float] | None = None
    said: set[str] = set()
    look_s = lease_ms / 1000 / LOOKS_PER_LEASE
    unproven = Backoff(BackoffPolicy(min(RENEW_RETRY_FIRST_S, look_s), look_s))
    while True:
        waiting_out = False  # another's entry at this address, to be seen renewed or gone
        try:
            members = await store.client.zrange(store.keys.members, 0, -1, withscores=True)
        except STORAGE_ERRORS as exc:
            log.debug("members not read (%r): tried again", exc)
        else:
            now = others_at(members, address, holder)
            if seen is not None and (live := [e for e, score in now.items() if e not in seen or score > seen[e]]):
                raise StartupError(
                    f"advertise_address: another live process advertises {address} (member {live[0]!r}): each "
                    "process of a keyspace needs an address of its own, where the others and routing clients reach "
                    "it alone; sharing one, the groups of the process the address does not reach answer nobody")
            # Free only by a read made once this process is registered: one starting at once, unregistered
            # too, may have read before either entry was there (an entry rising or appearing still counts).
            if not now and any(_own(as_text(m), holder) for m, _ in members):
                return
            if now.keys() - said:  # the start waits, up to a lease or so: said, not left to look hung
                said |= now.keys()
                _say_waiting(address, sorted(now), lease_ms)
            seen, waiting_out = now, bool(now)
        await (asyncio.sleep(look_s) if waiting_out else unproven.wait())


class SharedAddressWatch:
    """After the start, on every renewal's read of the members: another process's entry at this
    process's address. The start refused a live one, but a process whose renewals lapsed for a whole
    lease (paused, or Redis out of its reach) looked gone, its entry dropped, and one started at its
    address meanwhile; once the first renews again both serve there, and calls forwarded to the
    address reach either at random — those of a group the one they reach does not own refused
    ``GROUP_MOVED`` naming no owner, and its ``GetRouting`` sending routing clients nowhere. So the
    process whose renewal finds its own entry gone, added anew beside another at its address — the one
    back later, its leases lapsed with it — stops (``must_stop``: exit status 4; it takes no group
    meanwhile, and a restart is refused while the other serves), said at ERROR naming the address and
    the other entry (``stopping``, ``address_shared``). The other, whose entry stayed, serves on, and
    says the entry at its address at ERROR, once per entry (``address_shared``)."""

    __slots__ = ("_address", "_holder", "_must_stop", "_said", "armed", "stepping_down")

    def __init__(self, address: str, holder: str, must_stop: Callable[[], None]) -> None:
        self._address, self._holder, self._said, self._must_stop = address, holder, set[str](), must_stop
        self.armed = False
        """Set once the start found the address this process's alone (before: ``refuse_if_shared`` waits)."""
        self.stepping_down = False
        """Set once this process, back at an address another serves, stops."""

    def check(self, members: list[str], anew: bool = False) -> None:
        """``members`` as a renewal read them; ``anew``: that renewal added this process's entry anew (it
        was gone: unrenewed past a lease, or lost by Redis) rather than renewing it."""
        if not self.armed:
            return
        others = {m for m in members if _another_at(m, self._address, self._holder)}
        if anew and others and not self.stepping_down:
            self.stepping_down, entries = True, sorted(others)
            log.error("advertise_address %s is another live process's too (%s), registered there while this "
                      "process's entry had lapsed (its renewals paused or out of Redis's reach past a lease): this "
                      "process, back later, stops to be restarted (exit status 4) and the other serves on; give each "
                      "process an address of its own", self._address, ", ".join(entries),
                      extra={"event": "stopping", "why": "address_shared", "entries": entries})
            self._said |= others
            self._must_stop()
        elif new := sorted(others - self._said):
            self._said |= others
            log.error("advertise_address %s is another member's too (%s): calls forwarded to the address reach "
                      "either process, those of a group the one reached does not own answering nobody; the one "
                      "back at the address later (its renewals lapsed past a lease, then resumed) stops by itself, "
                      "and a process starting there is refused; give each process an address of its own",
                      self._address, ", ".join(new), extra={"event": "address_shared", "entries": new})


def _say_waiting(address: str, entries: list[str], lease_ms: int) -> None:
    log.info("advertise_address %s is another member's too (%s): waited out before any group is taken — renewed, "
             "it is a live process's and the start refuses; left as it is (a killed process's), Redis drops it "
             "within a lease (%d ms)", address, ", ".join(entries), lease_ms,
             extra={"event": "address_waiting", "entries": entries})


__all__ = ["MEMBERS_SCRIPT", "SharedAddressWatch", "others_at", "refuse_if_shared"]
