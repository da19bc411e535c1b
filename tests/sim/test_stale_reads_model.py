"""The stale-read invariant (``suspends.stale_reads``, R7) and what it forgives after Redis came back from older
data (``membership.leases_lost``): only a lease Redis lost — its key taken back to another holder or none — lets
another process take the group before the holder's renewal can tell. A restore that kept the key naming the holder
lost no lease: a taking by another then is a read the service must never answer. Pure: the world and processes are
stand-ins holding only what the two read."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tests.sim.membership import leases_lost
from tests.sim.suspends import stale_reads


def _proc(holder: str, witnessed: bool) -> Any:
    """A running process serving group 0, its keys taken back by a restore since its taking (``witnessed``)."""
    actor = SimpleNamespace(lease_until=10.0)
    engine = SimpleNamespace(local=lambda group: actor, lease_clock=SimpleNamespace(now=lambda: 1.0))
    members = SimpleNamespace(lease_lost=set(), witnessed=lambda group: witnessed)
    return SimpleNamespace(holder=holder, address=holder.split("|")[0], dead=False, frozen=False, engine=engine,
                           members=members, membership=members)


def _world(proc: Any, holder_after: str | None) -> Any:
    """Group 0's lease key named ``proc`` before a restore and ``holder_after`` after it; p1 took the group since."""
    world = SimpleNamespace(processes=[proc], leases=SimpleNamespace(holder={}, taken={0: "p1|2"}),
                            config=SimpleNamespace(shards=1), sleeps=SimpleNamespace(stale=[]),
                            log=SimpleNamespace(tally=SimpleNamespace(stale_reads_refused=0)))
    if holder_after is not None:
        world.leases.holder[0] = holder_after
    leases_lost(world, {0: proc.holder})
    return world


def test_a_read_of_a_group_taken_though_redis_restored_its_lease_key_naming_the_reader_is_stale_R7() -> None:
    """Defect: the invariant forgave every group whose keys a restore took back since its taking (``witnessed``),
    the lease key restored naming the reader still: a simulation dropping that restored lease as run out (a brief
    pause's) let p1 take the group and p0 answer its reads, and no seed could show it (seed 31 of
    ``test_a_lease_redis_restored_naming_a_host_suspended_for_seconds_is_not_dropped`` passed so since)."""
    proc = _proc("p0|1", witnessed=True)
    world = _world(proc, holder_after="p0|1")
    stale_reads(world, proc)
    assert proc.members.lease_lost == set()
    assert len(world.sleeps.stale) == 1 and "answered a read of group 0" in world.sleeps.stale[0]


def test_a_read_of_a_group_taken_after_redis_lost_the_reader_s_lease_is_no_finding_R7() -> None:
    """The key taken back to an earlier incarnation, or to none: Redis lost the lease, and no clock of the reader's
    can see it before its renewal (the case of seed 119, ``test_suspends.py``)."""
    for holder_after in ("p0|0", None):
        proc = _proc("p0|1", witnessed=True)
        world = _world(proc, holder_after=holder_after)
        stale_reads(world, proc)
        assert proc.members.lease_lost == {0} and world.sleeps.stale == [], holder_after
