"""``atp_recovery_entries`` of a leased process (``ownership = leases``, real Redis, real services): the log
entries its start replayed, those of the first share of groups it took — the start ``atp_recovery_seconds``
times (ATPSlowRecovery), and the first thing its runbook ("Slow start-up") has the operator read. It was set by
the single writer's start alone: a leased process said 0 entries replayed however many its start replayed, and
sent the operator looking elsewhere than at snapshots too rare or failing."""

from __future__ import annotations

import pytest

from atp_service import AtpService
from tests.atp_service.app.test_processes import SHARDS, owned
from tests.atp_service.edge.test_api import receipt
from tests.conftest import services_on
from tests.ports import held_port
from tests.waiting import until

FACTS = 12


def _replayed(service: AtpService) -> float | None:
    return service.metrics.registry.get_sample_value("atp_recovery_entries")


async def test_a_leased_start_says_the_entries_its_first_share_replayed(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with services_on(redis_url, ownership="leases", lease_ms=5_000, balance_ms=200, shards=SHARDS,
                           input_streams=()) as start:
        first, client = await start(port=held_port(), host="127.0.0.1")
        await until(lambda: owned(first) == set(range(SHARDS)), "the first process owns every group", 60)
        await client.record_events([receipt(f"in-{n}", f"SKU-{n}", "DC", 5) for n in range(FACTS)])
        membership = first.membership
        assert membership is not None
        # Handed over without their final snapshots, as by a process killed: the next start replays every entry.
        hand_over = membership._hand_over
        monkeypatch.setattr(membership, "_hand_over", lambda group, _snapshot=True: hand_over(group, False))
        await client.close()
        await first.stop()
        second, _ = await start(port=held_port(), host="127.0.0.1")
        assert second.engine is not None
        # No snapshot was ever written: each group taken replayed its whole log, up to its newest entry.
        logged = sum(actor.seq for actor in second.engine.actors if not actor.vacant)
    assert logged > 0
    assert _replayed(second) == logged
