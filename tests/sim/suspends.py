"""Each simulated host's lease clock over the world's clocks, and a host suspended past its leases (``--suspends``).

Every process's engine counts its leases (R7) on the product's ``LeaseClock`` over its host's clocks here, never
the real machine's (``HostClocks.lease_clock``): the host's monotonic clock is the world's (``ManualClock``), its
boot clock (``CLOCK_BOOTTIME``) the world's plus the time the host spent suspended, its wall clock that too plus
the host's offset (``--clock-skew``) and how far it was set ahead (``--clock-jumps``), as its service clock's. Without
``--suspends`` no host is suspended and every shard's deadline (``ShardActor.lease_until``) is the driver's
(endless, or passed), as before. With it, each renewal sets finite deadlines as ``Membership`` does: ``LEASE_S *
SAFETY`` past the lease clock's reading when the renewal (or the taking) was sent; and some pauses of a process are
suspends of its host (``Disruptor``): its monotonic clock stands still while its boot and wall clocks move on,
``LEASE_S`` or longer (its leases run out meanwhile, others take its groups) or seconds (none does).

The lease (an hour) is longer than any stretch the world's clock moves between two renewals of a running process
(the driver renews each at every step's end; a step moves it by 20 s at most, settling orders by ten minutes), so
a running process's deadlines pass only by a jump: a suspend of its host, its wall clock set hours ahead
(``--clock-jumps``: the groups unanswered there until its next renewal, which finds the leases still its own), or
every host suspended together (``--clock-jumps``: the world's clock moved on hours, every deadline passed till the
renewals). The world's own clock does not move for one host's suspend (the other hosts renew meanwhile, in time;
Redis's TTLs are not judged by it), and the host's service clock (``SystemClock``, the stamps) does not see it.

The invariant (``stale_reads``): no read answered by a process for a group whose lease another process has taken
since it was this one's — asked of the suspended process the moment it runs again (``Engine.local``: the owner check
every read makes, then its memory read). A lease clock blind to the suspend (counting the monotonic clock alone)
answers such reads from the memory of before the group was taken and changed by its taker; so does one whose clocks
share one lead (``LeaseClock`` before 664b1637), its wall clock once set ahead and put right (``--clock-jumps``).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from atp_service.app.membership import SAFETY
from atp_service.engine.clock import ManualClock
from atp_service.lease_clock import LeaseClock
from reservation import Moved

if TYPE_CHECKING:
    from tests.sim.cluster import ClusterWorld
    from tests.sim.jumps import ClockJumps
    from tests.sim.process import Process
    from tests.sim.skew import SkewedHosts

LEASE_S = 3600.0
"""The sim's lease (an hour): past any stretch the world's clock moves between renewals (settling: ten minutes)."""
SUSPEND_P = 0.5
"""The chance that a pause drawn (``Disruptor``) is a suspend of the process's host instead."""


class HostClocks:
    """Each host's clocks, in seconds, as its processes' lease clocks read them."""

    def __init__(self, world_clock: ManualClock, skew: SkewedHosts | None = None, jumps: ClockJumps | None = None
                 ) -> None:
        self._world, self._skew, self._jumps = world_clock, skew, jumps
        self.asleep: set[str] = set()
        """The hosts suspended now: the driver's expiry leaves their shards' deadlines to their lease clocks."""
        self.slept: dict[str, float] = {}
        """Per host address, the seconds it spent suspended (counted by its boot and wall clocks alone)."""
        self.rng: random.Random | None = None
        """``--suspends`` (``start``): finite deadlines and suspends, drawn from a stream of their own; None: none."""
        self.stale: list[str] = []
        """What ``stale_reads`` found (a finding each: the driver's checks raise it)."""

    def start(self, seed: int) -> None:
        self.rng = random.Random(f"suspends {seed}")

    def slept_now(self, address: str) -> bool:
        return address in self.asleep

    @property
    def finite(self) -> bool:
        return self.rng is not None

    def mono(self) -> float:
        return self._world.now_ms() / 1000

    def lease_clock(self, address: str) -> LeaseClock:
        """The product's lease clock over host ``address``'s clocks: monotonic, then boot and wall (``host_clocks``)."""
        self.slept.setdefault(address, 0.0)

        def boot() -> float:
            return self.mono() + self.slept[address]

        def wall() -> float:  # as the host's service clock's (``--clock-skew``, ``--clock-jumps``), plus its suspends
            skew = self._skew.offsets.get(address, 0) if self._skew is not None else 0
            ahead = self._jumps.ahead.get(address, 0) if self._jumps is not None else 0
            return self.mono() + self.slept[address] + (skew + ahead) / 1000

        return self.make(self.mono, (boot, wall))

    @staticmethod
    def make(mono: object, others: tuple[object, ...]) -> LeaseClock:
        """The lease clock built (a test puts a mutant here)."""
        return LeaseClock(mono=mono, others=others)  # type: ignore[arg-type]

    def deadline(self, sent: float) -> float:
        """R7: a shard stops answering ``SAFETY`` into a lease renewed (or taken) at ``sent`` (``Membership``)."""
        return sent + LEASE_S * SAFETY

    def suspend(self, address: str, long: bool) -> float:
        """Host ``address`` suspended: its boot and wall clocks move on, its monotonic clock stands still."""
        assert self.rng is not None
        seconds = LEASE_S * self.rng.uniform(1.0, 2.0) if long else self.rng.uniform(1.0, 60.0)
        self.slept[address] = self.slept.get(address, 0.0) + seconds
        self.asleep.add(address)
        return seconds


def stale_reads(world: ClusterWorld, proc: Process) -> None:
    """R7: ``proc`` answers no read for a group whose lease another process has taken since it was ``proc``'s: each
    group it answers for now (its owner check passed) must still be its own by the lease keys."""
    if proc.dead or proc.frozen:
        return
    for group in range(world.config.shards):
        try:
            actor = proc.engine.local(group)
        except Moved:
            world.log.tally.stale_reads_refused += world.leases.holder.get(group) not in (None, proc.holder)
            continue
        # Taken since by another process, not merely named by a lease key Redis took back to an older holder
        # (``--lose-tail``: nothing took the group from ``proc``, which renews and finds the key not its own). Nor
        # one Redis let another take after it lost ``proc``'s lease (its key taken back to another holder or none:
        # ``lease_lost``): no clock of ``proc``'s can see that loss before its renewal. A restore that kept the key
        # naming ``proc`` lost no lease: its group's keys taken back (``witnessed``) is no cause to take it.
        holder = world.leases.taken.get(group)
        if holder is not None and holder != proc.holder and group not in proc.members.lease_lost:
            world.sleeps.stale.append(
                f"R7: {proc.address} ({proc.holder}) answered a read of group {group} from its memory though {holder} "
                f"has taken its lease since: its lease clock read {proc.engine.lease_clock.now():.3f}, its deadline "
                f"{actor.lease_until:.3f}")
