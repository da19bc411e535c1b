"""A taking whose recovery Redis does not answer (a read of the group's snapshot or log timing out): the
group is given back at once and taken again at a later balance. It was said as an ERROR with a traceback —
the alert on errors fired for a slow Redis, which every balance meets again and gets past. Redis refusing
the read (an ACL changed while the service runs) stays an ERROR: no later balance gets past that."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import pytest
from redis.exceptions import NoPermissionError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.atp_service.app.test_lease_lost_mid_renewal import start, stocked_group
from tests.atp_service.app.test_lease_taking_answer_lost import key_value, served_again
from tests.conftest import ServiceFactory

__all__ = ["start"]  # the fixture, used here


@pytest.mark.parametrize(("error", "level", "event"), [
    (RedisTimeoutError("Timeout reading from socket"), logging.WARNING, "group_not_recovered"),
    (NoPermissionError("this user has no permissions to run the 'get' command"), logging.ERROR, None),
], ids=["timeout", "refused"])
async def test_a_taking_whose_recovery_fails_is_given_back_said_as_a_warning_only_if_redis_did_not_answer(
        start: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        error: RedisError, level: int, event: str | None) -> None:
    group = 1
    service, client, membership, engine, sku = await stocked_group(start, group, 5)
    await membership._hand_over(group)  # free now, its snapshot to be read by the next taking
    store = membership.leases.store
    _first_snapshot_read_fails(store, group, error, monkeypatch)
    caplog.set_level(logging.INFO, logger="atp_service")
    with contextlib.suppress(type(error)):  # the balance ends in it; the loop tries again
        await membership.balance()
    assert group not in membership.leases.held and engine.actors[group].vacant
    assert await key_value(redis_url, membership.leases.key(group)) is None, "given back at once"
    said = [(r.levelno, getattr(r, "event", None)) for r in caplog.records
            if r.name.startswith("atp_service") and "not recovered" in r.getMessage()]
    assert said == [(level, event)]
    if level < logging.ERROR:
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("atp_service")]
    await served_again(service, client, group, sku, 5, f"group {group} taken again")


def _first_snapshot_read_fails(store: Any, group: int, error: RedisError, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first read of ``group``'s snapshot ends in ``error``: a Redis too slow to answer, or refusing."""
    load, failed = store.load_snapshot, []

    async def failing(shard: int) -> Any:
        if shard == group and not failed:
            failed.append(shard)
            raise error
        return await load(shard)

    monkeypatch.setattr(store, "load_snapshot", failing)
