"""Routine takeovers must stay quiet (``lost_entries.say_if_lost``): a group lost here for its lease or
fenced reads back its shard's newest durable entry, and only a log without it — Redis lost it — is said at
ERROR. Controls beyond ``test_lease_lost_acknowledged``'s: the new owner trimmed the log by a snapshot, the
old owner's newest entry was its part of a cross-group change (R2), and a group recovered here with nothing
made here since."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.atp_service.app.test_lease_lost_acknowledged import (
    GROUP,
    SHARDS,
    lost_quietly,
)
from tests.atp_service.app.test_lease_lost_mid_renewal import lease_lapsed
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory, services_on
from tests.ports import held_port


@pytest.fixture
async def start(redis_url: str) -> AsyncIterator[ServiceFactory]:
    async with services_on(redis_url, ownership="leases", lease_ms=600_000, balance_ms=200_000,
                           owner_check_s=3600, shards=SHARDS, input_streams=()) as start:
        yield start


@pytest.mark.parametrize("order", ["renewal", "fenced"])
@pytest.mark.parametrize("case", ["new_snapshot", "cross_group", "recovered_only"])
async def test_routine_takeover_stays_quiet(start: ServiceFactory, redis_url: str, caplog: pytest.LogCaptureFixture,
                                            case: str, order: str) -> None:
    old, old_client = await start(port=held_port(), host="127.0.0.1")
    assert old.membership is not None and old.engine is not None
    skus = [f"k{i}" for i in range(256) if old.engine.place(f"k{i}") == GROUP]
    other = next(f"o{i}" for i in range(256) if old.engine.place(f"o{i}") not in (GROUP,))
    await old_client.record_events([receipt("in-1", skus[0], "DC", 10), receipt("in-2", other, "DC", 10)])
    if case == "cross_group":  # its newest entry: a part of a change across two groups
        await old_client.reserve("r1", [(skus[0], "DC", 4), (other, "DC", 1)], ttl_seconds=600)
    if case == "recovered_only":  # a second process, whose groups were recovered, nothing made there since
        await old.stop()
        old, old_client = await start(port=held_port(), host="127.0.0.1")
        assert old.membership is not None and old.engine is not None
        assert GROUP in old.membership.leases.held
        assert old.engine.actors[GROUP].durable_data is None  # type: ignore[union-attr]
    old_seq = old.engine.actors[GROUP].seq
    await lease_lapsed(redis_url, old.membership, GROUP)
    new, new_client = await start(port=held_port(), host="127.0.0.1")
    assert new.membership is not None and new.engine is not None
    await new.membership.balance()
    assert GROUP in new.membership.leases.held
    for i in range(3):
        await new_client.record_events([receipt(f"new-{i}", skus[1], "DC", 1)])
    if case == "new_snapshot":  # the log trimmed past the old owner's newest entry
        await new.engine.actors[GROUP].checkpoint(force=True)  # type: ignore[union-attr]
        assert new._log is not None and await new._log.entry_at(GROUP, old_seq) is None, "trimmed"
    await lost_quietly(old, old_client, skus[0], order, caplog)
    (position,) = await new_client.availability([(skus[0], "DC")])
    assert position.on_hand == 10
