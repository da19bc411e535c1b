"""The simulation's model of one process's ``LogStore`` (``leased.ProcessLog``) answers every read the owner check
makes (``Engine.check_logs_reach``): a log past every entry its shard sent asks ``leases.taken_over`` whose the
group is. 300 seeds of ``--processes 3 --lose-tail`` never reached that path; one that does must find the group
judged (taken: lost here; Redis gone back: not), never a read the model lacks (a background failure, a
Violation with nothing behind it)."""

from __future__ import annotations

from atp_service.storage.leases import taken_over
from atp_service.storage.records import claimed
from tests.sim.leased import ProcessLog
from tests.sim.simlog import SimLog


async def test_the_owner_check_s_reads_are_modelled_for_a_taken_group_and_for_redis_gone_back() -> None:
    redis = SimLog()
    old = ProcessLog(redis, "p0")
    lost: list[int] = []
    old.on_group_lost.append(lost.append)
    old.adopt(1, claimed(5, "aa"), 0)
    redis.owners[1] = claimed(5, "aa")
    assert not await taken_over(old, 1)  # its own: a log past it is diverged
    redis.owners[1] = claimed(3, "bb")
    assert not await taken_over(old, 1)  # below its taking: Redis went back
    assert lost == []
    redis.owners[1] = claimed(7, "cc")
    assert await taken_over(old, 1)  # a later taking: lost here
    assert lost == [1]
