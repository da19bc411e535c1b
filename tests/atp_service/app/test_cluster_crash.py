"""kill -9 of the service on a Redis Cluster while orders spanning shards are decided by sagas,
some of their callers giving up after a few milliseconds (R2, R7, R8).

After the restart every saga is carried through (by the reads below, or by housekeeping): every
acknowledged order is there as acknowledged, every order holds all its lines or none, and every
unit held at a position is held by exactly one order's line.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.edge.test_api import receipt
from tests.ports import held_port
from tests.waiting import FAST_RECONNECT_S, until

SKUS = [f"K{i}" for i in range(12)]
pytestmark = pytest.mark.slow


def spawn(cluster_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "atp_service", "serve", "--redis-url", cluster_url, "--port", str(port),
           "--metrics-port", "-1", "--no-demo", "--auth", "off", "--shards", "4", "--snapshot-every-entries", "50"]
    env = {**os.environ, "ATP_REDIS_CLUSTER": "true", "ATP_INPUT_STREAMS": "", "ATP_MAINTENANCE_INTERVAL_MS": "50"}
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True, env=env)


def lines_of(worker: int, n: int) -> list[tuple[str, str, int]]:
    return [(SKUS[(worker + n) % len(SKUS)], "DC", 1 + n % 3), (SKUS[(worker * 5 + n + 1) % len(SKUS)], "DC", 2)]


async def load(target: str, worker: int, acked: dict[str, pb.ReservationState], tried: set[str]) -> None:
    rng = random.Random(worker)
    async with AtpClient(target, timeout_s=5) as client:
        n = 0
        while True:
            rid = f"w{worker}-{n}"
            tried.add(rid)
            client.timeout_s = rng.choice((0.002, 0.02, 5.0))  # some callers give up mid-saga
            try:
                resp = await client.reserve(rid, lines_of(worker, n), ttl_seconds=3600)
                acked[rid] = resp.state
                if resp.state == pb.RESERVATION_STATE_HELD and n % 3 == 0:
                    acked[rid] = (await client.confirm(rid)).state
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE and "connect" in (exc.details() or "").lower():
                    return  # the service is gone
                if exc.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
                                      grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED):
                    raise
            n += 1


async def test_kill_minus_nine_mid_saga_leaves_every_order_whole_or_absent(cluster_url: str, tmp_path: Path) -> None:
    port = held_port()
    target = f"127.0.0.1:{port}"
    proc = spawn(cluster_url, port, tmp_path / "service.log")
    acked: dict[str, pb.ReservationState] = {}
    tried: set[str] = set()
    async with AtpClient(target, timeout_s=10, reconnect_max_s=FAST_RECONNECT_S) as client:
        await client.wait_ready()
        await client.record_events([receipt(f"seed-{s}", s, "DC", 100_000) for s in SKUS])
    workers = [asyncio.ensure_future(load(target, w, acked, tried)) for w in range(12)]
    await until(lambda: len(acked) >= 40, "the load got going", 120)  # a count, not a time: a busy host is slow
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    await asyncio.wait_for(asyncio.gather(*workers), 60)
    assert tried - set(acked), "orders in flight at the kill (or given up by their callers)"
    proc = spawn(cluster_url, port, tmp_path / "service.log")
    try:
        async with AtpClient(target, timeout_s=10, reconnect_max_s=FAST_RECONNECT_S) as client:
            await client.wait_ready()
            held: dict[str, int] = {}
            committed: dict[str, int] = {}
            for rid in sorted(tried):
                rec = await _settled(client, rid)
                if rec is None:
                    assert rid not in acked, f"acknowledged order {rid} lost"
                    continue
                if rid in acked:
                    assert rec.state == acked[rid] or (acked[rid], rec.state) == (
                        pb.RESERVATION_STATE_HELD, pb.RESERVATION_STATE_CONFIRMED), (rid, acked[rid], rec.state)
                holding = [line.held + line.committed > 0 for line in rec.lines]
                assert all(holding) or not any(holding), f"{rid} holds in part: {rec.lines}"  # R2
                for line in rec.lines:
                    held[line.sku] = held.get(line.sku, 0) + line.held
                    committed[line.sku] = committed.get(line.sku, 0) + line.committed
            for p in await client.availability([(s, "DC") for s in SKUS]):  # each unit held once, by a whole order
                assert (p.reserved, p.committed) == (held.get(p.sku, 0), committed.get(p.sku, 0)), p
    finally:
        proc.terminate()
        proc.wait(10)


async def _settled(client: AtpClient, rid: str) -> pb.Reservation | None:
    """The order once its saga is carried through (a read drives it), or None when it never existed."""
    for _ in range(100):
        try:
            return await client.get_reservation(rid)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError(f"{rid}: its saga was not carried through")
