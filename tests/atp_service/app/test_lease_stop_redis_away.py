"""A leased stop (``ownership = leases``) while Redis does not answer: its groups were handed over one
after another, each waiting out a final snapshot's timeout and then its RELEASE's — a process holding
16 groups (the default shards, one process) at the default 2 s timeout took over a minute, past the
bound ``serve`` gives a stop (``shutdown_overran``, exit status 6). Once one hand-over finds Redis not
answering, the others go without a final snapshot (the next owner replays their logs, which hold
everything acknowledged: R7), their leases given back all at once (or left to run out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from atp_service.storage.embedded_redis import EmbeddedRedis
from atp_service.storage.leases import GroupLeases
from tests.atp_service.app.test_stop_redis_away import stopped_with_redis_paused
from tests.atp_service.edge.test_api import receipt
from tests.conftest import services_on
from tests.ports import held_port

SHARDS = 8


async def test_a_leased_stop_with_redis_not_answering_waits_out_one_hand_over_not_one_per_group(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with EmbeddedRedis(tmp_path / "redis") as server:
        async with services_on(server.url, redis_timeout_s=1.0, ownership="leases", lease_ms=60_000,
                               shards=SHARDS, input_streams=()) as start:
            service, client = await start(port=held_port(), host="127.0.0.1")
            membership = service.membership
            assert membership is not None and len(membership.leases.held) == SHARDS
            await client.record_events([receipt(f"stock-{n}", f"SKU-{n}", "DC", 5) for n in range(64)])
            leases = membership.leases
            most = _releases_at_once(leases, monkeypatch)
            failures = service.metrics.registry.get_sample_value("atp_snapshot_failures_total")
            await stopped_with_redis_paused(server, service)
            assert service.metrics.registry.get_sample_value("atp_snapshot_failures_total") == failures + 1, (
                "one final snapshot tried, the others' groups left to their logs")
            assert max(most) == SHARDS - 1, "the leases after the first hand-over's given back at once"
            r = aioredis.Redis.from_url(server.url)
            try:  # not given back (Redis did not answer): as when they run out
                await r.delete(*(leases.key(g) for g in range(SHARDS)))
            finally:
                await r.aclose()
        async with services_on(server.url, ownership="leases", shards=SHARDS, input_streams=()) as start:
            _, client = await start(port=held_port(), host="127.0.0.1")  # nothing acknowledged lost
            answers = await client.availability([(f"SKU-{n}", "DC") for n in range(64)])
            assert [a.on_hand for a in answers] == [5] * 64


def _releases_at_once(leases: GroupLeases, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many of ``leases``' gives-back were under way at once, noted as each begins (the real RELEASE)."""
    release, giving, most = leases.release, set(), [0]

    async def counted(group: int, epoch: str | None = None) -> Any:
        giving.add(group)
        most.append(len(giving))
        try:
            return await release(group, epoch)
        finally:
            giving.discard(group)

    monkeypatch.setattr(leases, "release", counted)
    return most
