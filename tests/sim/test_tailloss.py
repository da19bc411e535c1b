"""``--lose-tail`` (``tailloss.py``): which instance may log a shard's ``LogDiverged`` (its log found short of what
it made durable: R7, documented as Redis having lost acknowledged entries, OPERATIONS.md ``shard_failed``).

With several processes the allowance was one flag for the whole run, reset only by the one-process ``World.boot``:
once a tail was lost, a ``LogDiverged`` from any process passed — one started, or a group taken, after the loss
included, whose shard recovered the log as Redis held it then and can only find it short by a defect (a shard
believing durable what never was). It is now each taking's: a loss of its group's keys after the taking began."""

from __future__ import annotations

import logging

from atp_service.storage.durability import LogDiverged, log_short
from tests.sim.cluster import ClusterWorld
from tests.sim.driver import Driver
from tests.sim.process import Process
from tests.sim.tailloss import RedisImage


def diverged(proc: Process, group: int) -> logging.LogRecord:
    """The ERROR ``ShardActor._report_failure`` logs, its failure the shard's of ``group`` at ``proc``."""
    actor = proc.engine.actors[group]
    actor.failure = log_short(group, 3, 5)
    return logging.LogRecord("atp_service.engine.shard", logging.ERROR, __file__, 0, "shard %d stopped working",
                             (group,), (LogDiverged, actor.failure, None))


def lose(world: ClusterWorld, groups: set[int] | None) -> None:
    """Redis comes back from what it holds now (every node, or the node of ``groups``)."""
    tail = world.tail
    assert tail is not None
    tail.image = RedisImage.capture(world.log, tail.acked, world.channels, world.lease_keys())
    tail.groups = groups
    world.lose_tail()


def held(proc: Process) -> list[int]:
    return sorted(g for g in proc.members.held if not proc.engine.actors[g].vacant)


async def test_a_log_found_short_is_expected_only_from_a_taking_that_lived_through_its_groups_loss() -> None:
    driver = Driver(3, processes=2, lose_tail=True)
    world, tail = driver.world, driver.tail
    assert isinstance(world, ClusterWorld) and tail is not None
    await world.boot()
    try:
        first, second = world.processes
        mine, other = held(first)[0], held(second)[0]
        assert not tail.allows(diverged(first, mine))  # nothing lost yet
        lose(world, {other})  # one node, another group's: this group's log is as it was
        assert not tail.allows(diverged(first, mine))
        world.pause(first)  # paused across the loss: the same taking, its shard's memory from before it
        lose(world, {mine})
        assert tail.allows(diverged(first, mine))
        first.log.thaw()
        # A process started after the loss takes the group: it recovers the log as Redis holds it now.
        world.kill(first)
        world.leases.expire(first.holder, mine)
        world.processes[0] = late = world._new(0)
        await late.spawn(late.members.take(mine))
        assert held(late) == [mine]
        assert not tail.allows(diverged(late, mine))  # the run lost a tail, this taking did not
        assert tail.allows(diverged(first, mine))  # the dead instance's finding stays its own
        lose(world, None)  # every node
        assert tail.allows(diverged(late, mine))
    finally:
        await world.stop()


async def test_a_step_sent_from_what_every_node_s_restore_lost_tears_its_order() -> None:
    """``--seed 205 --processes 3 --late-across-steps --retry-other-content --lose-tail --redis-full --shed
    --settle-faults --forward-streams --partition --clock-jumps --groups``: in step 45 order r89 expired at its
    home (group 0, its EXPIRE pending) and its share for group 1 was sent late; in step 46 every node came back
    from the save of step 39 (r89 HELD again at its home); in step 47 the late share expired the part in group 1.
    The order HELD with a part EXPIRED is a tear, as one node's restore makes (the product gives it up whole on
    a Confirm, ``_order_losses.released_unrecorded``, and expires it past its TTL): the check took it for an
    order that expired a part by itself (R2). A step still on its way at every node's restore, or sent from the
    order's record its home's process holds in memory, now tears its order (``ClusterWorld.lose_tail``)."""
    await Driver(205, processes=3, late_across_steps=True, retry_other_content=True, lose_tail=True,
                 redis_full=True, shed=True, settle_faults=True, forward_streams=True, partition=True,
                 clock_jumps=True, groups=True).run(48)
    # ``--seed 17 --processes 2 --late-across-steps --lose-tail --partition --clock-jumps``: r90 expired at its home in
    # step 29; every node came back from an older save at tick 26 of step 36, and p1, its owner check not run yet,
    # sent the EXPIRE for group 1 from the record it held in memory (served late, in step 37): torn likewise.
    await Driver(17, processes=2, late_across_steps=True, lose_tail=True, partition=True, clock_jumps=True).run(38)


async def test_a_confirmed_part_an_order_was_given_up_without_is_kept_committed() -> None:
    """``--seed 140 --processes 3 --lose-tail --forward-streams``: order r67, confirmed, its home's node back from
    before its decision (its Reserve pending again) while its part in group 2 kept its confirmation; group 2 silent
    past the TTL and the bound, the order was given up undecided without reading that part, and giving the part up
    once group 2 answered released its committed unit (Q3: the stamp check's "released 1 committed units"). It is
    kept committed, the documented case the service cannot see (``stamps.Unanswered``)."""
    await Driver(140, processes=3, lose_tail=True, forward_streams=True).run(59)
