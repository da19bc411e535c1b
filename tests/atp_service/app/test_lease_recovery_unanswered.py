"""A taking whose recovery Redis does not answer (a read of the group's snapshot or log timing out): the
group is given back at once and taken again at a later balance. It was said as an ERROR with a traceback —
the alert on errors fired for a slow Redis, which every balance meets again and gets past."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.atp_service.app.test_lease_lost_mid_renewal import start, stocked_group
from tests.atp_service.app.test_lease_taking_answer_lost import key_value, served_again
from tests.conftest import ServiceFactory

__all__ = ["start"]  # the fixture, used here


async def test_a_taking_whose_recovery_redis_does_not_answer_is_given_back_and_said_as_a_warning(
        start: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    group = 1
    service, client, membership, engine, sku = await stocked_group(start, group, 5)
    await membership._hand_over(group)  # free now, its snapshot to be read by the next taking
    store = membership.leases.store
    _first_snapshot_read_times_out(store, group, monkeypatch)
    caplog.set_level(logging.INFO, logger="atp_service")
    with contextlib.suppress(RedisTimeoutError):  # the balance ends in it; the loop tries again
        await membership.balance()
    assert group not in membership.leases.held and engine.actors[group].vacant
    assert await key_value(redis_url, membership.leases.key(group)) is None, "given back at once"
    said = [r for r in caplog.records if getattr(r, "event", None) == "group_not_recovered"]
    assert [(r.levelno, r.group) for r in said] == [(logging.WARNING, group)]  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("atp_service")]
    await served_again(service, client, group, sku, 5, f"group {group} taken again")


def _first_snapshot_read_times_out(store: Any, group: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first read of ``group``'s snapshot times out, as against a Redis too slow to answer."""
    load, timed_out = store.load_snapshot, []

    async def slow(shard: int) -> Any:
        if shard == group and not timed_out:
            timed_out.append(shard)
            raise RedisTimeoutError("Timeout reading from socket")
        return await load(shard)

    monkeypatch.setattr(store, "load_snapshot", slow)
