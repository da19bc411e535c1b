"""Smoke runs of benchmarks/fault_soak.py and its delaying proxy (issue 15).

The soak runs for a few seconds with every kind of fault at least once (a Redis write pause, a
proxy delay, connections to Redis reset, kill -9 and restart) and must find every invariant it checks holding. No timing
assertions: its figures are what ``make soak`` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeout

from atp_service.storage.log import connect
from benchmarks.soak_check import until_clean
from benchmarks.tcp_delay import DelayProxyProcess

ROOT = Path(__file__).resolve().parent.parent.parent
pytestmark = pytest.mark.slow
CLEAN = ("wedged", "service_down", "lost", "facts_applied_twice", "oversold", "divergences", "hold_mismatches",
         "channel_mismatches", "idempotency_violations")


@pytest.mark.timeout(600)
async def test_soak_with_every_fault_kind_keeps_every_invariant(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "benchmarks/fault_soak.py", "--seconds", "6", "--seed", "5", "--force-each",
        "--check-bound", "15", "--workdir", str(tmp_path / "soak"), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 540)
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert len(lines) == 1, err.decode()[-3000:]
    figures = lines[0]
    found = [ln for ln in err.decode().splitlines() if ln.startswith(("violation:", "note:"))]
    violations = "\n".join([*found[:40], f"(service log: {tmp_path / 'soak' / 'service.log'})"])
    assert all(figures["faults"][kind] >= 1 for kind in ("pauses", "delays", "kills", "cuts")), figures
    assert figures["acknowledged_reservations_checked"] > 0 and figures["acknowledged_facts_checked"] > 0, figures
    assert {kind: figures[kind] for kind in CLEAN} == dict.fromkeys(CLEAN, 0), violations
    assert figures["ok"] and proc.returncode == 0, violations


async def test_delaying_proxy_lands_a_timed_out_write_later(redis_url: str, tmp_path: Path) -> None:
    """Toward Redis: the client gives up, the write still lands after the delay. Back from Redis:
    the write lands at once, the reply is what is late."""
    async with _proxied(redis_url, tmp_path, 0.3) as (direct, proxy, through):
        assert await through.set("k", "before")
        await proxy.delay(2.0, "up")
        with pytest.raises(RedisTimeout):
            await through.set("k", "late")
        assert await direct.get("k") == b"before"
        assert await until(lambda: direct.get("k"), b"late")
        await proxy.clear()
        assert await through.set("k", "prompt")  # connected again: a new connection waits for its handshake
        await proxy.delay(2.0, "down")
        with pytest.raises(RedisTimeout):
            await through.set("k", "landed")
        assert await until(lambda: direct.get("k"), b"landed")
        await proxy.clear()
        assert await through.set("k", "again") and await direct.get("k") == b"again"


async def test_a_cut_connection_answers_a_write_redis_ran_by_a_lost_connection(redis_url: str, tmp_path: Path) -> None:
    """``cut``: the write reached Redis and ran; its reply, held back, never comes — the connection is reset
    (R7's lost connection: in doubt). The next call opens a new connection."""
    async with _proxied(redis_url, tmp_path, 60.0) as (direct, proxy, through):
        assert await through.set("k", "before")
        await proxy.delay(60.0, "down")  # the reply waits in the proxy; the cut comes first
        writing = asyncio.ensure_future(through.set("k", "landed"))
        assert await until(lambda: direct.get("k"), b"landed")  # Redis ran it
        await proxy.cut()
        with pytest.raises(RedisConnectionError):
            await writing
        await proxy.clear()
        assert await through.set("k", "again") and await direct.get("k") == b"again"


@contextlib.asynccontextmanager
async def _proxied(redis_url: str, tmp_path: Path, timeout_s: float
                   ) -> AsyncIterator[tuple[aioredis.Redis, DelayProxyProcess, aioredis.Redis]]:
    """A client straight to Redis, the delaying proxy in front of it, and a client through the proxy
    connected as the service's are (``timeout_s``, no retries)."""
    direct = aioredis.Redis.from_url(redis_url)
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = DelayProxyProcess(f"127.0.0.1:{port}", tmp_path / "proxy.log")
    through = connect(f"redis://127.0.0.1:{await proxy.start()}/0", timeout_s)
    try:
        yield direct, proxy, through
    finally:
        await through.aclose()
        await direct.aclose()
        await proxy.stop()


async def until(read: Callable[[], Awaitable[Any]], want: bytes, bound_s: float = 10.0) -> bool:
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        if await read() == want:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_first_check_longer_than_the_bound_is_checked_again() -> None:
    """The first full comparison of a long soak outlasts the bound; what changed during it (a hold
    expiring between the durable read and memory's answer) is looked at again, not reported."""
    now = [0.0]
    runs: list[float] = []

    async def check() -> list[str]:
        runs.append(now[0])
        if len(runs) == 1:
            now[0] += 40.0  # the first run takes longer than the bound
            return ["reservation r1: live EXPIRED, log HELD"]
        return []

    assert await until_clean(check, bound_s=30.0, every_s=0, clock=lambda: now[0]) == []
    assert runs == [0.0, 40.0]


async def test_a_difference_that_stays_is_reported_once_the_bound_has_passed() -> None:
    now = [0.0]

    async def check() -> list[str]:
        now[0] += 10.0
        return ["position p: live 1, log 2"]

    assert await until_clean(check, bound_s=30.0, every_s=0, clock=lambda: now[0]) == ["position p: live 1, log 2"]
    assert now[0] == 40.0  # checked again until the bound after the first run had passed
