"""A taken group's clock (``GroupClock``, R6) under hosts whose clocks disagree within a gap and are stepped
forward: pure, each host the product's ``SystemClock`` over a wall clock of its own and the world's monotonic one."""

from __future__ import annotations

import random

import pytest

from atp_service.engine.clock import GroupClock, ManualClock, SystemClock

GAP_MS = 60_000
"""How far apart two hosts' clocks may be at any instant (the promise, R3: an eighth of the retention)."""
MOVES = 8


class Host:
    """A host: its wall clock the world's plus an offset that steps, its monotonic clock the world's."""

    def __init__(self, world: ManualClock, offset_ms: int) -> None:
        self.offset_ms = offset_ms
        self.clock = SystemClock(wall_ns=lambda: (world.now_ms() + self.offset_ms) * 1_000_000,
                                 mono_ns=lambda: world.now_ms() * 1_000_000)


def test_a_group_moved_between_hosts_stepped_forward_in_turn_runs_at_most_a_gap_ahead_of_them_R6_R3() -> None:
    """Defect: a taken group's clock was its taker's plus how far its log was ahead when taken, kept for good. Moved
    from the host ahead to the one behind, that one then stepped forward a gap past the other (never more than a gap
    apart), and so on in turn: the lead grew by a gap at each move, stamps ran further ahead of every host than the
    order-id-reuse rules allow. The lead is gone once the taker's own clock passes the group's."""
    world = ManualClock()
    ahead, behind = Host(world, GAP_MS), Host(world, 0)
    group = GroupClock(ahead.clock, 0)
    leads = []
    for _ in range(MOVES):
        logged = group.now_ms()  # the newest stamp its owner logged before the group moved
        world.advance(1_000)  # the move takes a second
        group = GroupClock(behind.clock, logged)
        behind.offset_ms = ahead.offset_ms + GAP_MS  # stepped forward: now the one ahead, by the gap
        world.advance(1_000)
        furthest_behind = min(ahead.clock.now_ms(), behind.clock.now_ms())
        leads.append(group.now_ms() - furthest_behind)
        assert group.now_ms() >= logged, "a stamp below one already logged (R6)"
        ahead, behind = behind, ahead
    assert max(leads) <= GAP_MS, f"leads over the host clock furthest behind, ms: {leads}"


def test_a_taken_group_counts_on_from_what_was_logged_until_its_host_clock_passes_it_R6() -> None:
    """Taken from a host a minute ahead: stamped from the logged timestamp on at the monotonic rate (TTLs count),
    never below it, though its taker's wall clock steps back; once a forward step takes the taker past it, the
    taker's clock, and a step back after does not bring the lead back."""
    world = ManualClock()
    taker = Host(world, 0)
    logged = world.now_ms() + GAP_MS
    group = GroupClock(taker.clock, logged)
    assert group.now_ms() == logged
    taker.offset_ms = -GAP_MS  # an NTP step back: the group still counts on
    world.advance(5_000)
    assert group.now_ms() == logged + 5_000
    taker.offset_ms = 2 * GAP_MS  # a step forward past the group's clock: the lead is gone
    assert group.now_ms() == taker.clock.now_ms() == world.now_ms() + 2 * GAP_MS
    before = group.now_ms()
    taker.offset_ms = 0  # back again: the process's clock counts on from its newest stamp, and so does the group
    world.advance(1_000)
    assert group.now_ms() == taker.clock.now_ms() == before + 1_000


def test_a_taken_group_leaves_the_process_clock_alone_R6() -> None:
    """The process's own clock (what its other groups stamp with) is not moved by a group taken ahead of it: their
    holds expire on time."""
    world = ManualClock()
    taker = Host(world, 0)
    group = GroupClock(taker.clock, world.now_ms() + GAP_MS)
    world.advance(1_000)
    assert group.now_ms() == world.now_ms() + GAP_MS  # counted on from the logged stamp
    assert taker.clock.now_ms() == world.now_ms()


BAND_MS = GAP_MS // 2
"""Each host's wall clock within this of the true time (the world's), either way: any two within ``GAP_MS``."""
RUNS, OPS = 40, 300


class Fleet:
    """Three hosts, each running one process (its ``SystemClock``, started anew at a restart), and three groups,
    each stamped by a ``GroupClock`` over its owner's clock, taken anew at each move or restart of its owner."""

    def __init__(self, world: ManualClock, rng: random.Random) -> None:
        self.world, self.rng = world, rng
        self.hosts = [Host(world, rng.randint(-BAND_MS, BAND_MS)) for _ in range(3)]
        self.owner = [0, 1, 2]
        self.logged = [host.clock.now_ms() for host in self.hosts]  # each group's newest stamp
        self.groups = [GroupClock(self.hosts[g].clock, self.logged[g]) for g in range(3)]

    def take(self, group: int, host: int) -> None:
        self.owner[group] = host
        self.groups[group] = GroupClock(self.hosts[host].clock, self.logged[group])

    def stamp(self, group: int) -> None:
        """R6: never below the group's newest stamp; R3: within the band round the true time, as every host is."""
        now, before, true = self.groups[group].now_ms(), self.logged[group], self.world.now_ms()
        assert now >= before, f"group {group} stamped {before - now} ms below its log (R6)"
        assert true - BAND_MS <= now <= true + BAND_MS, f"group {group} {now - true:+d} ms off the true time (R3)"
        self.logged[group] = now

    def act(self) -> None:
        rng, op = self.rng, self.rng.randrange(5)
        if op == 0:
            self.world.advance(rng.choice([0, 1, 999, rng.randint(0, 3 * GAP_MS)]))
        elif op == 1:  # an NTP step, back or forward, anywhere within the band
            rng.choice(self.hosts).offset_ms = rng.randint(-BAND_MS, BAND_MS)
        elif op == 2:  # a move: the group's newest stamp logged at its owner, then taken by another
            group = rng.randrange(3)
            self.stamp(group)
            self.take(group, rng.randrange(3))
        elif op == 3:  # a process restarted: its clock anew (the wall clock's), its groups taken again
            host = rng.randrange(3)
            self.hosts[host] = Host(self.world, self.hosts[host].offset_ms)
            for group in (g for g in range(3) if self.owner[g] == host):
                self.take(group, host)
        else:
            self.stamp(rng.randrange(3))


@pytest.mark.parametrize("seed", range(RUNS))
def test_any_moves_restarts_and_steps_within_the_band_keep_every_stamp_in_it_and_in_order_R6_R3(seed: int) -> None:
    """The interval the order-id-reuse rules rely on (R3), for any sequence: every host's clock within ``BAND_MS``
    of the true time ``t``, a process's clock reads in [t - BAND_MS, t + BAND_MS] (never below its wall clock; a
    timestamp it gave, counted on at the monotonic rate, stays ≤ t + BAND_MS), so does a taken group's (never
    below its process's; what its log holds, counted on, likewise) — so any two groups' stamps at one instant are at
    most the hosts' gap apart, however often groups move. A lead kept for good fails here at once."""
    rng = random.Random(seed)
    fleet = Fleet(ManualClock(), rng)
    for _ in range(OPS):
        fleet.act()
