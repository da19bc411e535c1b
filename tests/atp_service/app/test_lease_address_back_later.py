"""Two live processes at one advertised address after the start (``ownership = leases``): a process paused
past its lease (SIGSTOP) looked gone, its member entry dropped, and another started at its address (a copied
``advertise_address``) found the address free and took its groups. Once the first runs again, both serve at
the address, and calls forwarded there reach either at random — those reaching the one that owns nothing
refused ``GROUP_MOVED`` naming no owner. The one back later (its entry added anew beside the other's) stops,
exit status 4, saying the address and the other's entry; the other serves on (``shared_address``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import redis.asyncio as aioredis

from tests.atp_service.app.test_processes import SHARDS, owned, start_process
from tests.conftest import ServiceFactory, spawned
from tests.ports import held_port
from tests.waiting import until

__all__ = ["start_process"]  # the fixture, used here by name

LEASE_MS = 1000
EXIT_SHARD_FAILED = 4
"""``atp-service serve``'s exit status for a stop to be restarted."""


def _serve(redis_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "atp_service", "serve", "--redis-url", redis_url, "--host", "127.0.0.1",
           "--port", str(port), "--metrics-port", "-1", "--no-demo", "--auth", "off", "--shards", str(SHARDS),
           "--ownership", "leases", "--lease-ms", str(LEASE_MS), "--balance-ms", "200"]
    env = {**os.environ, "ATP_INPUT_STREAMS": ""}
    return spawned(subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
                                    env=env))


async def _holders(admin: aioredis.Redis) -> list[str]:
    """Each group's lease holder (``<address>|<token>``), '' where none."""
    values = await admin.mget([f"atp:{{g{g}}}:lease" for g in range(SHARDS)])
    return [v.decode() if v else "" for v in values]


async def test_a_process_back_at_an_address_another_took_meanwhile_stops(start_process: ServiceFactory,
                                                                        redis_url: str, tmp_path: Path) -> None:
    port = held_port()
    address = f"127.0.0.1:{port}"
    log = tmp_path / "first.log"
    first = _serve(redis_url, port, log)
    admin = aioredis.Redis.from_url(redis_url)
    try:
        await until(lambda: _every_group_at(admin, address), "every group taken by the first process", 60)
        holder = (await _holders(admin))[0]
        os.kill(first.pid, signal.SIGSTOP)  # paused past its lease: its entry and leases lapse
        try:
            second, _ = await start_process(port=held_port(), host="127.0.0.1", advertise_address=address,
                                            lease_ms=LEASE_MS)  # waits the paused one's entry out, then serves
            await until(lambda: owned(second) == set(range(SHARDS)), "every group taken by the second process", 30)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        status = await asyncio.to_thread(_ended, first, 30.0)
        text = log.read_text()
        assert status == EXIT_SHARD_FAILED, f"the process back later at {address} served on beside the other:\n{text}"
        second_entry = second.membership.leases.holder  # type: ignore[union-attr]
        assert f"advertise_address {address} is another live process's too ({second_entry}" in text
        assert not second.failed.is_set() and owned(second) == set(range(SHARDS))  # the other serves on
        assert all(h.startswith(address) and h != holder for h in await _holders(admin))
    finally:
        await admin.aclose()
        if first.poll() is None:
            first.kill()
            await asyncio.to_thread(first.wait)


async def _every_group_at(admin: aioredis.Redis, address: str) -> bool:
    return all(h.startswith(address + "|") for h in await _holders(admin))


def _ended(proc: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """``proc``'s exit status, or None where it still runs after ``timeout_s`` (a bound for a broken run)."""
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return None
