"""The owner check of a process that lost a group without knowing yet (its lease ran out while it was
paused or cut off; it has not renewed since): the log then holds the new owner's entries, past any this
process sent. That is a group taken, not a log diverged: the group is given up as fenced (WARNING
``group_lost``), not stopped as a shard that failed (ERROR, ``atp_shard_failures_total``) — unless the
owner key went back below this process's taking: Redis lost data, which stops the shard loudly."""

from __future__ import annotations

import pytest
import redis.asyncio as aredis

from tests.atp_service.app.test_lease_lost_mid_renewal import lease_lapsed, start
from tests.atp_service.app.test_redis_lost_tail import restored, saved
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory
from tests.ports import held_port
from tests.waiting import until

__all__ = ["start"]  # the fixture, used here


async def test_a_group_taken_while_its_old_owner_was_away_is_given_up_by_its_owner_check_not_failed(
        start: ServiceFactory, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    old, _ = await start(port=held_port(), host="127.0.0.1")
    new, new_client = await start(port=held_port(), host="127.0.0.1")
    assert old.membership is not None and new.membership is not None and old.engine is not None
    group = 2
    assert group in old.membership.leases.held
    sku = next(f"k{i}" for i in range(64) if old.engine.place(f"k{i}") == group)
    await lease_lapsed(redis_url, old.membership, group)  # as while it was paused: it has not renewed since
    await new.membership.balance()
    assert group in new.membership.leases.held
    await new_client.record_events([receipt("in-1", sku, "DC", 3)])  # the new owner's entry in the group's log
    failures = old.metrics.registry.get_sample_value("atp_shard_failures_total")
    await old.engine.check_logs_reach()
    await until(lambda: group not in old.membership.leases.held and old.engine.actors[group].vacant,  # type: ignore[union-attr]
                "the group given up by its old owner", 30)
    assert old.metrics.registry.get_sample_value("atp_shard_failures_total") == failures, "a shard failed"
    assert "another writer added it" not in caplog.text
    assert old.metrics.registry.get_sample_value("atp_groups_given_up_total", {"why": "fenced"}) == 1


async def test_an_owner_key_gone_back_below_this_process_s_taking_stops_the_shard_loudly(
        start: ServiceFactory, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Redis back from data older than this process's taking: the owner key names the previous owner's
    older epoch, which writes past every entry this process had acknowledged. Not a taking (owner keys
    only rise): the acknowledged entries are lost, and the shard stops as diverged, at ERROR."""
    b, b_client = await start(port=held_port(), host="127.0.0.1")
    a, a_client = await start(port=held_port(), host="127.0.0.1")
    assert a.membership is not None and b.membership is not None and a.engine is not None and b.engine is not None
    group = 2
    assert group in b.membership.leases.held
    skus = [f"k{i}" for i in range(400) if b.engine.place(f"k{i}") == group]
    await b_client.record_events([receipt("b-0", skus[0], "DC", 1)])
    r = aredis.Redis.from_url(redis_url)
    try:
        image = await saved(r)
        await lease_lapsed(redis_url, b.membership, group)
        await a.membership.balance()
        assert group in a.membership.leases.held
        for n in range(3):
            await a_client.record_events([receipt(f"a-{n}", skus[1], "DC", 1)])  # acknowledged by A
        await restored(r, image, at_once=True)  # back from before A's taking: the owner key B's, older
        for n in range(6):
            await b_client.record_events([receipt(f"b-{n + 1}", skus[2], "DC", 1)])
    finally:
        await r.aclose()
    failures = a.metrics.registry.get_sample_value("atp_shard_failures_total")
    await a.engine.check_logs_reach()
    assert a.metrics.registry.get_sample_value("atp_shard_failures_total") == failures + 1
    assert "another writer added it" in caplog.text
