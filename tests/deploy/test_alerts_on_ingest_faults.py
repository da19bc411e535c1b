"""Faults of the input streams' reading, caused on a real service with a real Redis, fire their alert
over the values the service's own /metrics endpoint exports (tests/deploy/scraped_alerts.py)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
import redis

from atp_service.edge import record
from tests.atp_service.app.test_processes import SHARDS, group_of, owned
from tests.atp_service.app.test_processes_streams import STREAMS, spawn_owner, start_leased, stream_state
from tests.atp_service.fact_helpers import F
from tests.conftest import ServiceFactory
from tests.ports import held_port
from tests.waiting import until

from .scraped_alerts import Scrape, firing, scrape

__all__ = ["start_leased"]  # the fixture, used by name
UNREAD = 1500
"""Facts appended while the reader is stuck: above the alert's threshold (1,000)."""
# Only the reader is scraped here, while two processes share the keyspace.
SCRAPED_ONE_OF_TWO = "ATPProcessesLiveMismatch"


async def exported_at_least(port: int, series: str, value: float, within_s: float) -> Scrape:
    """A scrape in which ``series`` is at least ``value``, or the last one after ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        samples = scrape(port)
        if samples.get(series, 0.0) >= value or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.2)  # a poll's pace, bounded: the caller asserts on the scrape it gets


async def test_a_reader_stuck_behind_its_batches_fires_an_alert_as_facts_pile_up_unread(
        start_leased: ServiceFactory, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader waits for room among its ``ingest_inflight`` batches, each waiting for an owner that
    does not answer (paused; its sends time out late): facts pile up unread — POS sales not taken off
    on_hand, availability stale while the tills sell on (oversell) — and no alert fired. The pending
    gauge was set by the stuck reader itself (frozen), and nothing exported the group's unread lag."""
    monkeypatch.setattr(record, "SEND_TIMEOUT_S", 600.0)  # an owner whose sends never come back
    reader, _ = await start_leased(port=held_port(), host="127.0.0.1", metrics_port=0)
    membership = reader.membership
    assert membership is not None
    owner = spawn_owner(redis_url, port := held_port(), tmp_path / "owner.log", lease_ms=60_000)
    await until(lambda: sum(membership.where(g)[0] == f"127.0.0.1:{port}" for g in range(SHARDS)) == SHARDS // 2
                and len(owned(reader)) == SHARDS // 2, "the groups shared with the other process", 60)
    skus = [f"stuck-{i}" for i in range(64)]
    away = [s for s in skus if group_of(s) not in owned(reader)]
    here = [s for s in skus if group_of(s) in owned(reader)]
    r = redis.Redis.from_url(redis_url)
    now = int(time.time() * 1000) - 1000
    owner.send_signal(signal.SIGSTOP)
    try:
        for n in range(3):  # ingest_inflight batches, each read alone, each waiting for the paused owner
            r.xadd(STREAMS[0], F(f"away-{n}", "RECEIPT", away[n], "DC", 1, now).fields())
            await until(lambda: stream_state(r, STREAMS[0]) == (n + 1, 0), "the batch read", 30)  # noqa: B023
        # Stuck: its ``ingest_inflight`` batches all in flight, none done (each waits for the paused owner), so it
        # reads nothing more (``Ingestor.step``). Seen, not slept on: a sleep passed wherever the host was slower.
        batches = reader.ingestor._batches if reader.ingestor is not None else set()
        await until(lambda: len(batches) == reader.config.ingest_inflight, "the reader's batches all in flight", 30)
        assert not any(batch.done() for batch in batches), batches
        before = scrape(reader.metrics_port)
        with r.pipeline(transaction=False) as pipe:
            for n in range(UNREAD):
                pipe.xadd(STREAMS[1], F(f"sale-{n}", "RECEIPT", here[n % len(here)], "DC", 1, now).fields())
            pipe.execute()
        assert stream_state(r, STREAMS[1]) == (0, UNREAD), "the reader is not stuck"
        lag = f'atp_ingest_lag{{instance="atp:9464", job="atp-service", stream="{STREAMS[1]}"}}'
        after = await exported_at_least(reader.metrics_port, lag, UNREAD, within_s=30)
        assert firing(before, after, tmp_path) - {SCRAPED_ONE_OF_TWO} == {"ATPIngestBehind"}
    finally:
        owner.send_signal(signal.SIGCONT)
