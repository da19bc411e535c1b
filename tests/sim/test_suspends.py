"""``--suspends`` (``suspends.py``): each host's leases counted on the product's lease clock over the world's clocks,
with finite deadlines, and hosts suspended past their leases: a woken process answers no read of a group taken
meanwhile (R7)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from atp_service.engine.clock import ManualClock
from atp_service.lease_clock import JUMP_S, LeaseClock
from tests.sim.checks import Violation
from tests.sim.driver import Driver
from tests.sim.inputcluster import InputsClusterDriver
from tests.sim.suspends import LEASE_S, HostClocks
from tests.sim.tally import Tally

SUSPENDS_SEEDS = int(os.environ.get("ATP_SIM_SUSPENDS_SEEDS", "1"))
"""Seeds with two processes and with three whose hosts are suspended: about 0.5 s of CPU each."""


def test_a_suspend_moves_the_host_s_lease_clock_past_its_deadline_though_its_monotonic_clock_stood_still() -> None:
    world = ManualClock(1_000_000)
    hosts = HostClocks(world)
    hosts.start(0)
    clock = hosts.lease_clock("p0")
    sent = clock.now()
    deadline = hosts.deadline(sent)
    hosts.suspend("p0", long=True)
    assert hosts.mono() == 1_000  # the world's monotonic clock did not move
    assert clock.now() > deadline >= sent + LEASE_S * 0.8
    assert hosts.lease_clock("p1").now() == pytest.approx(sent)  # another host's clocks did not move


async def test_a_host_suspended_past_its_leases_answers_no_read_of_a_group_taken_meanwhile() -> None:
    """Every renewal sets finite deadlines on the host's lease clock; a suspend past them, others taking the host's
    groups meanwhile: on waking, the process answers no read of them (R7), and every other invariant holds."""
    tally = Tally()
    for seed in range(SUSPENDS_SEEDS):
        await Driver(seed, tally, processes=2, suspends=True).run(60)
        await Driver(seed, tally, processes=3, suspends=True).run(60)
    assert tally.host_suspends and tally.stale_reads_refused, tally


async def test_a_lease_clock_blind_to_the_suspend_answers_a_stale_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The invariant bites: a lease clock counting the monotonic clock alone (no other clock of the host, as
    ``LeaseClock`` before it read ``CLOCK_BOOTTIME``) wakes with every deadline ahead and answers reads of a group
    another process took meanwhile (seed 0, two processes: at step 16)."""
    blind: Callable[[object, tuple[object, ...]], LeaseClock] = \
        lambda mono, others: LeaseClock(mono=mono, others=())  # type: ignore[arg-type]  # noqa: E731
    monkeypatch.setattr(HostClocks, "make", staticmethod(blind))
    with pytest.raises(Violation, match=r"R7: p0 .* answered a read of group .* though .* has taken its lease since"):
        await Driver(0, Tally(), processes=2, suspends=True).run(60)


class OneLead(LeaseClock):
    """The lease clock before 664b1637: one lead for every clock (the furthest any had drawn over the monotonic one),
    so a suspend shorter than a wall clock's earlier step ahead (put right since) did not move it."""

    __slots__ = ("_lead",)

    def __init__(self, mono: Callable[[], float], others: tuple[Callable[[], float], ...]) -> None:
        super().__init__(mono, others)
        self._lead = max(self._furthest, default=0.0)

    def now(self) -> float:
        readings = [clock() for clock in self._others]
        mono = self._mono()
        if (lead := max((reading - mono for reading in readings), default=0.0)) - self._lead > JUMP_S:
            self._ahead_s += lead - self._lead
            self._lead = lead
        return mono + self._ahead_s


async def test_a_lease_clock_with_one_lead_for_every_clock_answers_a_stale_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A host's wall clock set hours ahead and put right (``--clock-jumps``), then its host suspended past its leases
    for less than that step: one lead shared by every clock does not count the suspend (seed 8: at step 22)."""
    monkeypatch.setattr(HostClocks, "make", staticmethod(OneLead))
    with pytest.raises(Violation, match=r"R7: p1 .* answered a read of group .* though .* has taken its lease since"):
        await Driver(8, Tally(), processes=2, clock_jumps=True, suspends=True).run(60)


async def test_a_lease_key_redis_took_back_to_an_older_holder_is_no_taking_of_the_group() -> None:
    """``--lose-tail`` with suspends: p2 took group 1 from p0, its host was suspended for seconds, and one node of
    Redis restarted meanwhile from data saved before the taking (its lease key naming p0 again, nothing taking the
    group since): p2, woken with its lease still counting, answers reads of it, as it must (its next renewal finds the
    key not its own). The invariant judged the key, so took this for a stale read (seed 117, at step 20)."""
    await Driver(117, Tally(), processes=3, lose_tail=True, forward_streams=True, partition=True, clock_jumps=True,
                 suspends=True).run(60)


async def test_a_lease_clock_blind_to_the_suspend_answers_a_stale_read_under_input_streams(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``--input-streams --processes 2 --partition --suspends``: the invariant bites there too (seed 0: at step 11),
    the woken process's reader and desk going on with what they held."""
    blind: Callable[[object, tuple[object, ...]], LeaseClock] = \
        lambda mono, others: LeaseClock(mono=mono, others=())  # type: ignore[arg-type]  # noqa: E731
    monkeypatch.setattr(HostClocks, "make", staticmethod(blind))
    with pytest.raises(Violation, match=r"R7: p\d .* answered a read of group .* though .* has taken its lease since"):
        await InputsClusterDriver(0, 2, Tally(), partition=True, suspends=True).run(60)


async def test_a_lease_redis_restored_naming_a_host_suspended_for_seconds_is_not_dropped() -> None:
    """``--lose-tail`` with suspends: one node of Redis restarted from older data while p0's host was suspended for
    seconds, its lease key naming p0 still, as its lease had not run out (an hour); the simulation dropped every
    restored lease of a process not running, as of one paused past its leases, so p1 took p0's group and p0, woken
    with its lease still counting, answered a read of it: a stale read the service never makes, Redis refusing that
    taking (seed 31, at step 37). A brief pause's or suspend's restored lease is kept (``ClusterWorld.lose_tail``).
    Seed 31 draws that case no more (its schedule changed since), and none of 510 seeds of this configuration did
    with the kept lease dropped again: the invariant's side of it is pinned by ``test_stale_reads_model.py``."""
    await Driver(31, Tally(), processes=2, lose_tail=True, clock_skew=True, forward_streams=True, partition=True,
                 clock_jumps=True, suspends=True).run(60)


async def test_a_group_taken_after_redis_lost_the_woken_process_s_lease_is_no_finding() -> None:
    """``--lose-tail`` with suspends: one node of Redis restarted from older data while p0's host was suspended for
    seconds, its lease key for group 0 naming an earlier incarnation of p0, dead (its lease run out): Redis lost p0's
    lease, and p1 took the group as Redis allowed. p0, woken with its lease counting on every clock, answers reads of
    it until its next renewal finds the key not its own: no clock of its own can see a loss of Redis's data (writes
    are refused by the owner key, R7). The invariant took this for a stale read (seed 119, at step 41)."""
    await Driver(119, Tally(), processes=2, lose_tail=True, clock_skew=True, settle_faults=True, forward_streams=True,
                 partition=True, clock_jumps=True, suspends=True, groups=True).run(60)


async def test_a_suspend_drawn_for_a_process_already_stopped_leaves_it_stopped_by_the_other_pause() -> None:
    """``--input-streams --processes 3 --partition --suspends --new-addresses``: p0 was stopped holding a quarantine
    write (``inputholds``) until t103, its lease on group 2 run out meanwhile with its deadline left ahead (it had
    passed that check already, ``ClusterWorld.expire``); the step's suspend drawn for p0 at its start fired at t39 on
    the process stopped already, and its end at t55 ran p0 again, the other pause cut short: woken, it answered a read
    of group 2, which p1.8 had taken at t44, by the deadline the other pause left (seed 16, at step 33). A pause or
    suspend firing on a process stopped already (or dead) stops nothing, and its end runs nothing again."""
    await InputsClusterDriver(16, 3, Tally(), partition=True, suspends=True, new_addresses=True).run(60)
