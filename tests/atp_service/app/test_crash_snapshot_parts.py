"""kill -9 of the service while its snapshots are written in parts over several keys (R7, E10).

Snapshots are due every few entries and stored in parts of 4 KiB over keys of 8 KiB, so under load a
shard's snapshot is nearly always on its way to Redis, a part or the move into place: each kill leaves
staging keys and a try's id behind, at any step. After every restart the service holds exactly what it
acknowledged (every acknowledged hold there with its lines, every held unit counted once), a stored
snapshot whole (as many keys as it says, each persistent), and its next snapshots in parts land over
what the killed try left.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.storage.keys import Keyspace
from tests.atp_service.app.test_crash import SKUS, held_as_acknowledged, load
from tests.atp_service.edge.test_api import receipt
from tests.ports import held_port
from tests.waiting import FAST_RECONNECT_S, until

pytestmark = pytest.mark.slow
SHARDS = 2
KILLS = 3


def spawn(redis_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "atp_service", "serve", "--redis-url", redis_url, "--port", str(port),
           "--metrics-port", "-1", "--no-demo", "--auth", "off", "--shards", str(SHARDS),
           "--snapshot-every-entries", "3", "--snapshot-part-bytes", "4096", "--snapshot-piece-bytes", "8192",
           "--snapshot-retry-max-s", "0.2"]
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


async def _snapshots_whole(redis_url: str) -> int:
    """Each shard's stored snapshot in as many persistent keys as ``snap-pieces`` says; returns the most keys one
    is in."""
    keys, client = Keyspace("atp:"), aioredis.Redis.from_url(redis_url)
    most = 0
    try:
        for shard in range(SHARDS):
            count = int(await client.get(keys.snap_pieces(shard)) or b"1")
            for piece in range(count):
                assert await client.ttl(keys.snap(shard, piece)) == -1, (shard, piece)  # there, persistent
            assert not await client.exists(keys.snap(shard, count)), shard  # no piece of an older one past it
            most = max(most, count)
    finally:
        await client.aclose()
    return most


async def _killed_under_load(proc: subprocess.Popen[bytes], client: AtpClient, round_: int,
                             acked: dict[str, list[tuple[str, str, int]]], tried: set[str]) -> None:
    """Reserves from 16 workers (ids of this round) until the process is killed, once 40 more are acknowledged."""
    before = len(acked)
    workers = [asyncio.ensure_future(load(client, 100 * round_ + w, acked, tried)) for w in range(16)]
    await until(lambda: len(acked) > before + 40 or all(w.done() for w in workers), "the load under way", 60)
    assert not all(w.done() for w in workers), "the load stopped before the kill"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    await asyncio.gather(*workers)


async def test_kill_minus_nine_while_snapshots_go_in_parts_loses_nothing_acknowledged_R7(
        redis_url: str, tmp_path: Path) -> None:
    port, log = held_port(), tmp_path / "service.log"
    acked: dict[str, list[tuple[str, str, int]]] = {}
    tried: set[str] = set()
    proc = spawn(redis_url, port, log)
    try:
        for round_ in range(KILLS):
            client = AtpClient(f"127.0.0.1:{port}", timeout_s=5, reconnect_max_s=FAST_RECONNECT_S)
            try:
                await client.wait_ready()
                if round_ == 0:
                    await client.record_events([receipt(f"seed-{s}", s, "DC", 100_000) for s in SKUS])
                else:
                    await held_as_acknowledged(client, acked, tried)
                await _killed_under_load(proc, client, round_, acked, tried)
            finally:
                await client.close()
            proc = spawn(redis_url, port, log)
        client = AtpClient(f"127.0.0.1:{port}", timeout_s=5, reconnect_max_s=FAST_RECONNECT_S)
        try:
            await client.wait_ready()
            await held_as_acknowledged(client, acked, tried)
            resp = await client.reserve("after-kills", [(SKUS[0], "DC", 1)], ttl_seconds=3600)
            assert resp.state == pb.RESERVATION_STATE_HELD
        finally:
            await client.close()
        proc.send_signal(signal.SIGTERM)  # final snapshots, in parts, over what the killed tries left
        assert proc.wait(30) == 0
        assert await _snapshots_whole(redis_url) > 1  # the snapshots did go in several keys
        proc = spawn(redis_url, port, log)
        client = AtpClient(f"127.0.0.1:{port}", timeout_s=5, reconnect_max_s=FAST_RECONNECT_S)
        try:
            await client.wait_ready()
            acked["after-kills"] = [(SKUS[0], "DC", 1)]
            await held_as_acknowledged(client, acked, tried | {"after-kills"})
        finally:
            await client.close()
    finally:
        proc.terminate()
        proc.wait(10)
