"""How the processes sharing a keyspace (``ownership = leases``) spread its shard groups: each one's
balancing turn (``plan_balance``), decided from what it read of the members and the groups' owners,
and what it has seen of live processes that take no groups and the groups they leave free
(``FreeWatch``). Pure: ``membership.Membership`` reads, decides here, then takes and hands over.

A process's share counts every live one (``plan_balance``): a member that cannot take —
an earlier release's process in a rolling upgrade, whose every balance fails on the new owner keys
yet which stays registered, or one whose takings keep failing — holds the others at a share that
leaves its part unserved: a group that falls free (its owner stopped, a lease lost, a shard that
stopped working handed back) answers nobody, though a live process could serve it. ``FreeWatch`` is
what one process has seen of that, read once a balance turn: a group free for ``LEFT_FREE_TURNS``
balance periods while a live process below the floor of its share took nothing counts that process
out of the shares; the others' shares grow and the group is taken, above the share that counts
everyone. It is counted again once it is seen taking a group or registering anew (a restart): the
normal balancing then hands the excess over to it.

Converging: a process counted out gets nothing handed over, so nothing goes back and forth while it
takes nothing; one seen taking again is counted, and what was taken above share goes to it. One
process is first: the wait grows by a balance period per live process that prefers the group more
(``preference``) and is not below its floor; the first one's taking ends the others' waits (two at
once are settled by the lease: one acquire wins).
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass

LEFT_FREE_TURNS = 3
"""Balance periods a group stays free, seen by one process, before the live processes below the
floor of their share that took nothing meanwhile are counted out. A group handed over or whose lease
ran out is taken at the next balance of a process below its share — within one period, its lease
set (and its count seen rising) before it is recovered — so three periods are never a healthy
taker's pace, and still bound how long a group stays unserved to a few seconds (one lease with the
default ``balance_ms``). It scales with ``ATP_BALANCE_MS``: no setting of its own."""


def address_of(holder: str) -> str:
    """The advertised address in a lease's holder (``<address>|<token>``)."""
    return holder.rpartition("|")[0]


def plan_balance(address: str, groups: int, members: Sequence[str], held: set[int],
                 routes: Mapping[int, tuple[str, int]], busy: Container[int],
                 out: Container[str] = ()) -> tuple[int | None, list[int]]:
    """One balancing turn of the process at ``address``: (a group to hand over, or None; the free
    groups to take, most wanted first). Its share is ``ceil(groups / live processes)``; above it, or
    above the floor while another live process has less than the floor, it gives one group up. Live:
    a member, or the holder of a live lease — a member whose registration lapsed for a slow call
    still holds its groups, and must not be counted out (the others would take, then hand back) —
    but for ``out``, the live processes seen taking nothing (``FreeWatch``). While another has less
    than the floor it takes only up to the floor: what it handed over is left to that one, not taken
    straight back (a starved process that never takes then leaves groups free, and is counted out)."""
    owned = Counter(owner for owner, _ in routes.values())
    live = {address_of(m) for m in members} | set(owned) | {address}
    counted = {p for p in live if p == address or p not in out}
    share, least = math.ceil(groups / len(counted)), groups // len(counted)
    starved = any(owned[other] < least for other in counted if other != address)
    if len(held) > share or (len(held) > least and starved):
        return min(held, key=lambda g: preference(address, g)), []
    room = (least if starved else share) - len(held)
    free = [g for g in range(groups) if g not in routes and g not in held and g not in busy]
    return None, sorted(free, key=lambda g: preference(address, g), reverse=True)[:room]


def preference(address: str, group: int) -> int:
    """How much the process at ``address`` wants ``group`` (stable per address: a restarted process
    tends to take back the groups it had; processes spread over the groups)."""
    return zlib.crc32(f"{address}:{group}".encode())


@dataclass(frozen=True)
class CountedOut:
    """A live process counted out of the shares: ``group`` stayed free ``free_for`` (in the watch's
    time unit) while it, below the floor of its share, took nothing."""

    address: str
    group: int
    free_for: float


class FreeWatch:
    """What the process at ``address`` has seen, one read a balance turn (``period`` apart, in the
    unit ``observe`` is given ``now`` in), of the free groups and of who takes."""

    def __init__(self, address: str, period: float) -> None:
        self.address, self.period = address, period
        self.out: set[str] = set()
        """Live processes counted out of the shares now (``plan_balance``'s ``out``)."""
        self._registered: dict[str, set[str]] = {}  # address -> every member entry seen at it
        self._owned: Counter[str] = Counter()  # groups each process held at the last read
        self._taking: dict[str, float] = {}  # address -> when last seen taking (or registering anew)
        self._free: dict[int, float] = {}  # group -> since when it is free, as read

    def observe(self, now: float, groups: int, members: Sequence[str], routes: Mapping[int, tuple[str, int]],
                busy: Container[int]) -> tuple[list[CountedOut], list[str]]:
        """One read (``members``, ``routes`` as ``plan_balance`` takes them): (the processes counted
        out at it, the processes counted again)."""
        owned = Counter(owner for owner, _ in routes.values())
        entries: dict[str, set[str]] = {}
        for member in members:
            entries.setdefault(address_of(member), set()).add(member)
        live = set(entries) | set(owned) | {self.address}
        again = self._seen_taking(now, live, owned, entries)
        self._owned = owned
        self._free = {g: self._free.get(g, now) for g in range(groups) if g not in routes and g not in busy}
        counted = {p for p in live if p not in self.out}
        out = self._left_free(now, groups // len(counted), counted, owned)
        self.out |= {c.address for c in out}
        return out, again

    def _seen_taking(self, now: float, live: set[str], owned: Counter[str], entries: dict[str, set[str]]) -> list[str]:
        """Notes who took a group since the last read, or registered anew; they are counted again."""
        for gone in set(self._taking) - live:
            self._taking.pop(gone)
            self._registered.pop(gone, None)
            self.out.discard(gone)  # not live: counted nowhere anyway; a return is a new start
        again = []
        for p in sorted(live):
            seen = self._registered.setdefault(p, set())
            if p not in self._taking or owned[p] > self._owned[p] or not entries.get(p, set()) <= seen:
                self._taking[p] = now
                if p in self.out:
                    self.out.discard(p)
                    again.append(p)
            seen |= entries.get(p, set())
        return again

    def _left_free(self, now: float, least: int, counted: set[str], owned: Counter[str]) -> list[CountedOut]:
        """The processes to count out at this read: those below the floor that took nothing while the
        group free longest stayed free past this process's wait for it."""
        if not self._free:
            return []
        group, since = min(self._free.items(), key=lambda item: (item[1], item[0]))
        mine = preference(self.address, group)
        ahead = sum(1 for p in counted if p != self.address and owned[p] >= least and preference(p, group) > mine)
        if now - since <= self.period * (LEFT_FREE_TURNS + ahead):
            return []
        return [CountedOut(p, group, now - since) for p in sorted(counted)
                if p != self.address and owned[p] < least and self._taking[p] <= since]


__all__ = ["LEFT_FREE_TURNS", "CountedOut", "FreeWatch", "address_of", "plan_balance", "preference"]
