"""kill -9 while the consumer is mid-batch over the input stream: every entry applied exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
import redis

from atp_client import AtpClient
from tests.atp_service.app.test_crash import spawn
from tests.atp_service.fact_helpers import F, on_hand_of, send_stream, wait_consumed
from tests.ports import held_port
from tests.waiting import FAST_RECONNECT_S

pytestmark = pytest.mark.slow


async def test_kill_minus_nine_mid_batch_applies_each_entry_once(redis_url: str, tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    positions = [(f"K{i}", f"L{i % 3}") for i in range(40)]
    facts = [F(f"e{n}", "RECEIPT", *positions[n % 40], 1, now - 60_000 + n % 1000) for n in range(30_000)]
    await send_stream(redis_url, "atp:in:pos", facts)
    port = held_port()
    proc = spawn(redis_url, port, tmp_path / "service.log")
    r = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 30
    while True:  # kill once the consumer is well into the backlog
        groups = r.xinfo_groups("atp:in:pos") if r.exists("atp:in:pos") else []
        if groups and groups[0]["entries-read"] and groups[0]["entries-read"] > 5000:
            break
        assert time.monotonic() < deadline, (tmp_path / "service.log").read_text()
        await asyncio.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert r.xinfo_groups("atp:in:pos")[0]["lag"] > 0, "consumer finished before the kill; test proves nothing"
    proc = spawn(redis_url, port, tmp_path / "service.log")
    client = AtpClient(f"127.0.0.1:{port}", reconnect_max_s=FAST_RECONNECT_S)
    try:
        await client.wait_ready()
        await wait_consumed(redis_url, ["atp:in:pos"], timeout_s=60)
        got = await on_hand_of(client, positions)
        assert got == {p: 750 for p in positions}  # 30,000 units over 40 positions, each exactly once
    finally:
        await client.close()
        proc.terminate()
        proc.wait(10)


async def test_stale_pending_entries_of_a_dead_consumer_are_claimed(start_service, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    now = int(time.time() * 1000)
    r = redis.Redis.from_url(redis_url)
    r.xgroup_create("atp:in:wms", "atp", id="0", mkstream=True)
    for n in range(5):
        r.xadd("atp:in:wms", F(f"w{n}", "RECEIPT", "A", "DC", 2, now - 1000).fields())
    r.xreadgroup("atp", "dead-consumer", {"atp:in:wms": ">"}, count=10)  # delivered, never acknowledged
    _, client = await start_service(claim_idle_ms=50)
    await wait_consumed(redis_url, ["atp:in:wms"])
    (a,) = await client.availability([("A", "DC")])
    assert a.on_hand == 10
