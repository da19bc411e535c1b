"""Service processes sharing one keyspace on a Redis Cluster (``ownership = leases``), started as
``atp-service serve`` would be, and a caller that finds each group's owner by asking."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from atp_client import AtpClient
from tests.ports import held_port
from tests.waiting import FAST_RECONNECT_S

T = TypeVar("T")
SHARDS = 6
LEASE_MS = 1000
GONE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


def group_of(sku: str) -> int:
    return zlib.crc32(sku.encode()) % SHARDS


class Process:
    """One ``atp-service serve`` process of the keyspace."""

    def __init__(self, cluster_url: str, log: Path, port: int | None = None) -> None:
        self.port = port or held_port()
        self.address = f"127.0.0.1:{self.port}"
        self._cluster_url, self._log = cluster_url, log
        self.proc = self._spawn()
        self.client = AtpClient(self.address, timeout_s=5, reconnect_max_s=FAST_RECONNECT_S)  # made before it listens

    def _spawn(self) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "atp_service", "serve", "--redis-url", self._cluster_url, "--host", "127.0.0.1",
               "--port", str(self.port), "--metrics-port", "-1", "--no-demo", "--auth", "off",
               "--shards", str(SHARDS), "--ownership", "leases", "--lease-ms", str(LEASE_MS),
               "--snapshot-every-entries", "50"]
        env = {**os.environ, "ATP_REDIS_CLUSTER": "true", "ATP_INPUT_STREAMS": "", "ATP_MAINTENANCE_INTERVAL_MS": "50"}
        return subprocess.Popen(cmd, stdout=self._log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
                                env=env)

    async def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            await asyncio.to_thread(self.proc.wait, 20)
        await self.client.close()


class Estate:
    """Callers of a keyspace served by several processes: a call goes to the process last found
    owning its group, and on GROUP_MOVED (or a process gone) to the others in turn, until
    ``patience_s`` runs out. Every other refusal is raised."""

    def __init__(self, processes: list[Process], patience_s: float = 60.0) -> None:
        self.processes = processes
        self.patience_s = patience_s
        self._owner: dict[int, Process] = {}

    async def call(self, group: int, fn: Callable[[AtpClient], Awaitable[T]]) -> T:
        deadline = asyncio.get_running_loop().time() + self.patience_s
        while True:
            first = self._owner.get(group)
            for process in ([first] if first else []) + [p for p in self.processes if p is not first]:
                if process.proc.poll() is not None:
                    continue
                try:
                    result = await fn(process.client)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in GONE:
                        raise
                    continue
                self._owner[group] = process
                return result
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no process answered for group {group} in {self.patience_s}s")
            await asyncio.sleep(0.05)

    async def on_sku(self, sku: str, fn: Callable[[AtpClient], Awaitable[T]]) -> T:
        return await self.call(group_of(sku), fn)


async def all_served(estate: Estate, skus: list[str]) -> None:
    """Every group answers at some process (liveness)."""
    await asyncio.gather(*(estate.on_sku(sku, lambda c, s=sku: c.availability([(s, "DC")])) for sku in skus))


def ready(processes: list[Process]) -> Callable[[], Awaitable[Any]]:
    async def wait() -> None:
        await asyncio.gather(*(p.client.wait_ready(60) for p in processes))
    return wait


async def routing(processes: list[Process], within_s: float = 60.0) -> dict[int, str]:
    """Each group's owner once every live process's ``GetRouting`` says the same, every group has
    an owner and each process its share (the processes have balanced the groups)."""
    from atp_client.pb.atp.v1 import atp_pb2 as pb

    live = [p for p in processes if p.proc.poll() is None]
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        try:
            tables = [await p.client.stub.GetRouting(pb.GetRoutingRequest(), timeout=5) for p in live]
            views = [{r.group: r.address for r in t.groups} for t in tables]
        except grpc.aio.AioRpcError:
            views = []
        if views and all(v == views[0] for v in views) and all(views[0].values()):
            counts = [sum(a == p.address for a in views[0].values()) for p in live]
            if min(counts) >= SHARDS // len(live):
                return views[0]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the processes did not agree on a balanced routing in {within_s}s")
        await asyncio.sleep(0.05)
