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
normal balancing then hands the excess over to it; or once it holds the floor of the share that
counts it, nothing free: one counted out while its recoveries held its turns, then at its floor,
takes nothing more to be seen taking.

Agreeing. Each process counts out what it saw itself, so two can disagree: one away from Redis while
a group fell free counts a process in that another counts out, and the other holds above its share,
nothing ever free for the first to see. Another above its share, handing nothing over, for twice
``LEFT_FREE_TURNS`` periods is the sign: the ones below the floor that took nothing meanwhile are
counted out here too (one handing its excess over, however slowly, counts them in). And the
time a process did not read (Redis away, its turn held by a long recovery) counts one period: what
it saw before is not judged by time it did not see.

Converging. What the members below their floor lack is kept free for them (``plan_balance``): one at
or above its floor takes a free group only while as many as they lack stay free, and hands one over
only while fewer are free. So a group handed over is never taken straight back, and a healthy one
below its floor finds its part free at its next turn; one that never takes leaves it free, and is
counted out — without the reserve (each taking up to its share), the others hand a group over to it
and take it back without end, none free long enough to count it out. And only what they lack is
kept: the groups a graceful stop hands over beyond it are taken at each process's next turn — taking
only up to the floor while any other was below it held them for a few periods, where several of
those left are below their new floor (groups not divisible by them). Nothing is kept for a process
that is stopping: it leaves the members first, so what it hands over is taken at once up to the
shares that still count it, and the rest once it holds none. A process counted out gets nothing
handed over or kept; one seen taking again is counted, and what was taken above share goes to it.
One process is first: the wait grows by a balance period per live process that prefers the group
more (``preference``) and is not below its floor; the first one's taking ends the others' waits
(two at once are settled by the lease: one acquire wins).
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

Read = tuple[int, Sequence[str], Mapping[int, tuple[str, int]], Container[int]]
"""What one read gives ``FreeWatch``: the groups, the members, the owners, the groups busy here."""

ENTRIES_SEEN_MOST = 4
"""Member entries ``FreeWatch`` remembers per address: those read now and the last few before. Each start (and
each registering anew) at an address makes one; one at a stable address is live all along, its entries kept."""

PASSED_OVER_MAX = 32
"""The longest wait, in ``LEFT_FREE_TURNS``, of a process below its floor with nothing free before it
registers anew (``FreeWatch.register_anew``): each one not followed by a taking of its own doubles it."""


def address_of(holder: str) -> str:
    """The advertised address in a lease's holder (``<address>|<token>``)."""
    return holder.rpartition("|")[0]


def plan_balance(address: str, groups: int, members: Sequence[str], held: set[int],
                 routes: Mapping[int, tuple[str, int]], busy: Container[int],
                 out: Container[str] = ()) -> tuple[int | None, list[int]]:
    """One balancing turn of the process at ``address``: (a group to hand over, or None; the free
    groups to take, most wanted first). Its share is ``ceil(groups / live processes)``, its floor
    ``groups // live processes``. Live: a member, or the holder of a live lease — a member whose
    registration lapsed for a slow call still holds its groups, and must not be counted out (the
    others would take, then hand back) — but for ``out``, the live processes seen taking nothing
    (``FreeWatch``). What the other members below their floor lack is theirs: it takes free groups up
    to its share while as many stay free, and up to its floor whatever is free; above its share, or
    above its floor while fewer groups are free than the others lack, it gives one group up (the
    module's "Converging"). A process stopping leaves the members before it hands its groups over
    (``Membership.stop``): it is live while it holds any, but nothing is kept free or handed to it."""
    owned = Counter(owner for owner, _ in routes.values())
    live = {address_of(m) for m in members} | set(owned) | {address}
    counted = {p for p in live if p == address or p not in out}
    share, least = math.ceil(groups / len(counted)), groups // len(counted)
    free = [g for g in range(groups) if g not in routes and g not in held and g not in busy]
    registered = {address_of(m) for m in members}  # a holder that left them is stopping: nothing kept for it
    lack = sum(least - owned[p] for p in counted & registered if p != address and owned[p] < least)
    if len(held) > share or (len(held) > least and len(free) < lack):
        return min(held, key=lambda g: preference(address, g)), []
    room = max(0, least - len(held), min(share - len(held), len(free) - lack))
    return None, sorted(free, key=lambda g: preference(address, g), reverse=True)[:room]


def preference(address: str, group: int) -> int:
    """How much the process at ``address`` wants ``group`` (stable per address: a restarted process
    tends to take back the groups it had; processes spread over the groups)."""
    return zlib.crc32(f"{address}:{group}".encode())


@dataclass(frozen=True)
class CountedOut:
    """A live process counted out of the shares: ``group`` stayed free ``free_for`` (in the watch's
    time unit) while it, below the floor of its share, took nothing — or, with ``held_by``, that
    process held ``group`` above the share this one counts for ``free_for`` meanwhile."""

    address: str
    group: int
    free_for: float
    held_by: str = ""


class FreeWatch:
    """What the process at ``address`` has seen, one read a balance turn (``period`` apart, in the
    unit ``observe`` is given ``now`` in), of the free groups and of who takes."""

    def __init__(self, address: str, period: float) -> None:
        self.address, self.period = address, period
        self.out: set[str] = set()
        """Live processes counted out of the shares now (``plan_balance``'s ``out``)."""
        self._registered: dict[str, dict[str, None]] = {}  # address -> the member entries last seen at it, in order
        self._owned: Counter[str] = Counter()  # groups each process held at the last read
        self._taking: dict[str, float] = {}  # address -> when last seen taking (or registering anew)
        self._free: dict[int, float] = {}  # group -> since when it is free, as read
        self.register_anew = False
        """Set by a read that found this process below the floor of its share (or below the share,
        another above it) with no group free for it for ``LEFT_FREE_TURNS`` periods or more: a state
        that lasts only while another process counts it out (one above the floor hands a group over
        to one below it otherwise, one above the share hands one over).
        It was counted out when it could not take — a recovery of a big group holding its turns
        past a group's wait, Redis away from it for a while — and nothing falls free for it to be
        seen taking: it registers anew (a new member entry) to be counted again."""
        self._starving: float | None = None  # since when this process is below its floor, nothing free
        self._patience = LEFT_FREE_TURNS  # periods of that before it registers anew
        self._last: float | None = None  # when it last read
        self._above: dict[str, float] = {}  # another above this one's share -> since when, no hand-over seen

    def observe(self, now: float, groups: int, members: Sequence[str], routes: Mapping[int, tuple[str, int]],
                busy: Container[int]) -> tuple[list[CountedOut], list[str]]:
        """One read (``members``, ``routes`` as ``plan_balance`` takes them): (the processes counted
        out at it, the processes counted again)."""
        owned = Counter(owner for owner, _ in routes.values())
        entries: dict[str, set[str]] = {}
        for member in members:
            entries.setdefault(address_of(member), set()).add(member)
        live = set(entries) | set(owned) | {self.address}
        rose = owned[self.address] > self._owned[self.address]
        self._skip_unseen(now)
        again = self._seen_taking(now, live, owned, entries)
        before, self._owned = self._owned, owned
        taken = {g: since for g, since in self._free.items() if g in routes}
        self._free = {g: self._free.get(g, now) for g in range(groups) if g not in routes and g not in busy}
        again += self._settled(groups, live, owned)
        counted = {p for p in live if p not in self.out}
        read = (groups, members, routes, busy)
        out = (self._left_free(now, read, counted, owned) or self._taken_above(now, read, counted, owned, taken)
               or self._held_above(now, read, counted, owned, before))
        self.out |= {c.address for c in out}
        share, least = math.ceil(groups / len(counted)), groups // len(counted)
        mine = owned[self.address]  # below share, one above it: counted out by it (it hands over otherwise)
        passed_over = mine < least or (mine < share and any(owned[p] > share for p in counted))
        self.register_anew = self._passed_over(now, passed_over and not self._free, rose)
        return out, again

    def _skip_unseen(self, now: float) -> None:
        """Time this process did not read (Redis away from it, its turns held by a long recovery) is
        not time it saw the others take nothing or a group stay free: across such a gap its clocks
        move on one period. Back from a partition, it counted out at once every process that would
        take a group free before and after it, though each may have taken meanwhile (nor seen it
        take: the same count), and never counted it in again (a taker at its floor takes no more)."""
        last, self._last = self._last, now
        if last is None or now - last <= self.period * 2:
            return
        skipped = now - last - self.period
        self._taking = {p: seen + skipped for p, seen in self._taking.items()}
        self._free = {g: since + skipped for g, since in self._free.items()}
        self._above = {p: since + skipped for p, since in self._above.items()}
        if self._starving is not None:
            self._starving += skipped

    def _settled(self, groups: int, live: set[str], owned: Counter[str]) -> list[str]:
        """The processes counted out that hold some groups and at least the floor of the share that
        counts them, no group free: no longer below it, what they were counted out for is over. One
        counted out while its recoveries held its turns, then at its floor (another joined, or it took
        while this one did not read), takes no more to be seen taking: it stayed counted out for good,
        the others' shares counted without it — its groups as if nobody's, a process below the floor
        never handed its part — and ``ATPProcessNotTaking`` firing on it."""
        if self._free:
            return []
        again = []
        for p in sorted(self.out):
            counted = {q for q in live if q not in self.out} | {p}
            if owned[p] and owned[p] >= groups // len(counted):
                self.out.discard(p)
                again.append(p)
        return again

    def _passed_over(self, now: float, starving: bool, rose: bool) -> bool:
        """Whether this process, below its floor with nothing free for it long enough, registers
        anew. Its patience doubles at each (up to ``PASSED_OVER_MAX``) until it is seen taking: one
        whose takings fail is handed groups over and counted out again at a slowing pace, not on
        every few periods (each one a group unserved for a few periods)."""
        if rose:
            self._patience = LEFT_FREE_TURNS
        if not starving:
            self._starving = None
            return False
        if self._starving is None:
            self._starving = now
        if now - self._starving <= self.period * self._patience:
            return False
        self._starving, self._patience = None, min(self._patience * 2, LEFT_FREE_TURNS * PASSED_OVER_MAX)
        return True

    def _seen_taking(self, now: float, live: set[str], owned: Counter[str], entries: dict[str, set[str]]) -> list[str]:
        """Notes who took a group since the last read, or registered anew; they are counted again."""
        for gone in set(self._taking) - live:
            self._taking.pop(gone)
            self._registered.pop(gone, None)
            self.out.discard(gone)  # not live: counted nowhere anyway; a return is a new start
        again = []
        for p in sorted(live):
            seen, read = self._registered.setdefault(p, {}), entries.get(p, set())
            if p not in self._taking or owned[p] > self._owned[p] or not read <= seen.keys():
                self._taking[p] = now
                if p in self.out:
                    self.out.discard(p)
                    again.append(p)
            seen.update(dict.fromkeys(sorted(read - seen.keys())))
            for entry in [e for e in seen if e not in read][:max(0, len(seen) - ENTRIES_SEEN_MOST)]:
                del seen[entry]  # the oldest gone from the members: bounded, however often it restarts
        return again

    def _left_free(self, now: float, read: Read, counted: set[str], owned: Counter[str]) -> list[CountedOut]:
        """The processes to count out at this read: those that took nothing (nor were first seen, nor
        registered anew) for as long as this process waits for the group free longest, which stayed
        free that long too, and would take a group (``_would_take``)."""
        if not self._free:
            return []
        least = read[0] // len(counted)
        group, since = min(self._free.items(), key=lambda item: (item[1], item[0]))
        mine = preference(self.address, group)
        ahead = sum(1 for p in counted if p != self.address and owned[p] >= least and preference(p, group) > mine)
        wait = self.period * (LEFT_FREE_TURNS + ahead)
        if now - since <= wait:
            return []
        # Not "took nothing since the group fell free": one first seen, or seen taking another group,
        # after it fell free was never counted out for it, and what it lacks was kept free for it.
        # Past four times the wait, what the processes counted out here lack is not kept for them: one counted
        # out that never takes held the free group for it (``plan_balance`` counting everyone) while
        # those below the share that could take it but fail to were never counted out — free for good.
        out = self.out if now - since > wait * 4 else ()
        return [CountedOut(p, group, now - since) for p in sorted(counted)
                if p != self.address and now - self._taking[p] > wait and self._would_take(p, read, least, owned, out)]

    def _taken_above(self, now: float, read: Read, counted: set[str], owned: Counter[str],
                     taken: Mapping[int, float]) -> list[CountedOut]:
        """What another process counted out, seen in its taking of a group free ``LEFT_FREE_TURNS``
        periods or more above the share this process counts: the first one's taking ends the others'
        waits, and one that never counted out the process it did went on keeping free what that one
        lacks, handed a group over to it and had it taken back, and told it was counted out when not."""
        groups, _, routes, _ = read
        share, least, wait = math.ceil(groups / len(counted)), groups // len(counted), self.period * LEFT_FREE_TURNS
        for group, since in sorted(taken.items()):
            taker = routes[group][0]
            if now - since > wait and taker != self.address and owned[taker] > share:
                return [CountedOut(p, group, now - since) for p in sorted(counted) if p not in (self.address, taker)
                        and now - self._taking[p] > wait and self._would_take(p, read, least, owned)]
        return []

    def _held_above(self, now: float, read: Read, counted: set[str], owned: Counter[str],
                    before: Counter[str]) -> list[CountedOut]:
        """The processes below the floor of this one's share that took nothing while another held above
        that share, handing nothing over, for twice ``LEFT_FREE_TURNS`` periods: that one counts out a
        process this one counts in (seen free while this one was away from Redis, or it was not yet a
        member), takes its part, and hands nothing over. This one, at its share counting that process
        and nothing ever free, stayed there for good: the other at twice its load, the process counted
        out by one alone. One seen handing a group over counts the ones below in: what it holds above
        goes to them, one group a turn — a joiner losing a few races for them, or waiting on a hand-over
        slow as its final snapshot, was counted out. Nothing is unserved meanwhile: twice the wait."""
        groups, _, routes, _ = read
        share, least = math.ceil(groups / len(counted)), groups // len(counted)
        wait = self.period * LEFT_FREE_TURNS * 2
        self._above = {q: now if owned[q] < before[q] else self._above.get(q, now) for q in counted
                       if q != self.address and owned[q] > share}
        holding = sorted(q for q, since in self._above.items() if now - since > wait)
        if not holding:
            return []
        holder, since = holding[0], self._above[holding[0]]
        group = min(g for g, (a, _) in routes.items() if a == holder)
        return [CountedOut(p, group, now - since, holder) for p in sorted(counted - set(self._above))
                if p != self.address and owned[p] < least and now - self._taking[p] > wait]

    def _would_take(self, p: str, read: Read, least: int, owned: Counter[str], out: Container[str] = ()) -> bool:
        """Whether ``p`` would take a group at this read: below the floor of its share, or below the
        share with more groups free than the others lack (``plan_balance`` counting everyone but
        ``out``) — not only below the floor: two at it, taking none, left a group to nobody."""
        groups, members, routes, busy = read
        held = {g for g, (a, _) in routes.items() if a == p}
        return owned[p] < least or bool(plan_balance(p, groups, members, held, routes, busy, out)[1])

RENEW_RETRY_FIRST_S = 0.1
"""A renewal of the leases that left anything unrenewed (Redis slow or away) is tried again this soon."""
RENEW_RETRY_MOST = 0.1
"""Of a lease: the longest wait between renewals tried again after failures (the wait doubles each time)."""


class RenewalPace:
    """When a process renews its membership and leases next: a third of a lease after a renewal that
    renewed everything was sent; ``RENEW_RETRY_FIRST_S`` after one that did not ended, doubling while
    they fail, up to ``RENEW_RETRY_MOST`` of a lease. Its groups stop answering ``membership.SAFETY``
    into a lease after the last renewal that was sent: renewals tried again only every third of a lease
    would leave them unanswered for up to that long after Redis is back from a stall.

    A renewal that renewed everything is followed a third of a lease after it was *sent*, not after it
    was answered (at once where its answer took longer): each group's deadline counts from the send, so
    a wait counted from the answer spent its answer time twice — the deadline ran on from the send
    while it was answered, then again while the next one was. Answers slowed by a lagging event loop
    (seconds under load) lapsed deadlines whose leases Redis still held: two renewals answered in
    1.2 s each after a third of a 5 s lease left 4 s - (1.2 + 1.7 + 1.2) s, and the groups were
    refused ``GROUP_MOVED`` though no group moved."""

    def __init__(self, lease_s: float) -> None:
        self.usual_s = lease_s / 3
        self._most_s = max(RENEW_RETRY_FIRST_S, lease_s * RENEW_RETRY_MOST)
        self._wait_s = self.usual_s
        self._failing_since: float | None = None

    def after(self, renewed: bool, now: float, sent: float | None = None) -> float:
        """The wait before the next renewal, after one that ``renewed`` everything or not; ``sent``: when
        that one was sent (a renewed one's wait counts from it, none: from ``now``)."""
        if renewed:
            self._wait_s, self._failing_since = self.usual_s, None
            return max(0.0, self.usual_s - (now - sent)) if sent is not None else self.usual_s
        if self._failing_since is None:
            self._wait_s, self._failing_since = RENEW_RETRY_FIRST_S, now
        else:
            self._wait_s = min(self._wait_s * 2, self._most_s)
        return self._wait_s

    def failing_s(self, now: float) -> float:
        """How long renewals have failed, up to ``now`` (0: the last one renewed everything)."""
        return 0.0 if self._failing_since is None else now - self._failing_since

__all__ = ["LEFT_FREE_TURNS", "PASSED_OVER_MAX", "RENEW_RETRY_FIRST_S", "RENEW_RETRY_MOST", "CountedOut", "FreeWatch",
           "RenewalPace", "address_of", "plan_balance", "preference"]
