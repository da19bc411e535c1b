"""The owner check of a process that lost a group without knowing yet (its lease ran out while it was
paused or cut off; it has not renewed since): the log then holds the new owner's entries, past any this
process sent. That is a group taken, not a log diverged: the group is given up as fenced (WARNING
``group_lost``), not stopped as a shard that failed (ERROR, ``atp_shard_failures_total``)."""

from __future__ import annotations

import pytest

from atp_service import free_port
from tests.atp_service.app.test_lease_lost_mid_renewal import lease_lapsed, start
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory
from tests.waiting import until

__all__ = ["start"]  # the fixture, used here


async def test_a_group_taken_while_its_old_owner_was_away_is_given_up_by_its_owner_check_not_failed(
        start: ServiceFactory, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    old, _ = await start(port=free_port(), host="127.0.0.1")
    new, new_client = await start(port=free_port(), host="127.0.0.1")
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
