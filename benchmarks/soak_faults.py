"""The service as a supervised child process, and the faults ``fault_soak.py`` injects into it.

Faults come one after another, with a calm gap before each, drawn from a seeded generator:
- ``pause``: Redis ``CLIENT PAUSE <300-2000 ms> WRITE`` — what a failover or a slow fsync does: the
  service's writes wait in Redis past its timeout, then land;
- ``delay``: the proxy in front of Redis holds bytes 0.3-2 s for 1-4 s, toward Redis (writes time out
  at the service and land later), back from it (they land, the reply is late) or both;
- ``kill``: kill -9 of the service, a restart, and a wait until health says SERVING;
- ``cut``: the proxy resets every connection to Redis, most with a reply cut short (R7's lost
  connection: a write Redis read before the reset still runs, its answer never comes), 1-4 times.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from atp_client import reconnect_options
from atp_service.storage.embedded_cluster import EmbeddedCluster
from benchmarks.tcp_delay import DelayProxyProcess

READY_S = 90.0
"""Longest wait for a (re)started service to say SERVING."""
START_TRIES = 5
"""Starts in a row that may fail (exit before SERVING) before the soak gives up."""
KINDS = ("pause", "delay", "kill", "primary", "cut")
WEIGHTS = (4, 4, 2, 2, 3)


class ServiceDown(RuntimeError):
    """The service could not be brought back to SERVING."""


class ServiceProcess:
    """``atp-service serve`` that the soak starts, kills and restarts, as a supervisor would. An exit
    the soak did not cause is counted by status and followed by a restart."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path, port: int, cwd: Path) -> None:
        self.cmd, self.env, self.log, self.port, self.cwd = cmd, env, log, port, cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.exits: Counter[str] = Counter()
        """Exits the soak did not cause, by exit status."""
        self.starts = 0
        self._lock = asyncio.Lock()  # one start, kill or stop at a time

    async def start(self) -> None:
        async with self._lock:
            await self._start()

    async def _start(self) -> None:
        for _ in range(START_TRIES):
            with self.log.open("ab") as out:  # the child keeps its own copy of the descriptor
                self.proc = await asyncio.create_subprocess_exec(
                    *self.cmd, stdout=out, stderr=asyncio.subprocess.STDOUT, env=self.env, cwd=self.cwd)
            self.starts += 1
            if await self._serving():
                return
            if self.proc.returncode is None:
                break  # alive but never SERVING within READY_S: not a start that failed, a hang
            self.exits[str(self.proc.returncode)] += 1
        raise ServiceDown(f"the service did not reach SERVING (see {self.log})")

    async def _serving(self) -> bool:
        deadline = time.monotonic() + READY_S
        # made as the process starts: gRPC's own wait between attempts would grow past its start (1, 1.6, 2.6 s, ...)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}", options=reconnect_options()) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.returncode is not None:
                    return False
                with contextlib.suppress(grpc.aio.AioRpcError):
                    resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return True
                await asyncio.sleep(0.1)
        return False

    async def kill_and_restart(self) -> None:
        async with self._lock:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
            await self._start()

    async def revive(self) -> None:
        """Restart the service if it exited on its own (a supervisor's job)."""
        async with self._lock:
            if self.proc is not None and self.proc.returncode is not None:
                self.exits[str(self.proc.returncode)] += 1
                await self._start()

    async def watch(self, every_s: float = 0.2) -> None:
        while True:
            await asyncio.sleep(every_s)
            await self.revive()

    async def stop(self, bound_s: float) -> str:
        """SIGTERM (a graceful stop: drain, final snapshots); SIGKILL after ``bound_s``. How it ended."""
        async with self._lock:
            proc = self.proc
            if proc is None or proc.returncode is not None:
                return "not running"
            proc.terminate()
            try:
                code = await asyncio.wait_for(proc.wait(), bound_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                return f"killed: no exit within {bound_s:.0f} s of SIGTERM"
            return f"exit {code}"


class Faults:
    def __init__(self, rng: random.Random, admin: Any, proxy: DelayProxyProcess | None, service: ServiceProcess,
                 kinds: tuple[str, ...] = KINDS, gap_s: tuple[float, float] = (0.5, 2.0),
                 cluster: EmbeddedCluster | None = None) -> None:
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"faults: unknown {sorted(unknown)}; known: {', '.join(KINDS)}")
        self.rng, self.admin, self.proxy, self.service, self.gap_s = rng, admin, proxy, service, gap_s
        self.cluster = cluster
        self.kinds = [k for k in KINDS if k in kinds]
        self.weights = [w for k, w in zip(KINDS, WEIGHTS, strict=True) if k in kinds]
        self.counts: Counter[str] = Counter()

    async def run(self, stop_at: float, force_each: bool) -> None:
        """Faults until ``stop_at``; with ``force_each``, at least one of every kind even if that
        takes longer (in a shuffled order)."""
        forced = list(self.kinds) if force_each else []
        self.rng.shuffle(forced)
        while True:
            left = stop_at - time.monotonic()
            if left <= 0 and not forced:
                return
            gap = self.rng.uniform(*self.gap_s)
            await asyncio.sleep(gap if forced else min(gap, left))
            if not forced and (not self.kinds or time.monotonic() >= stop_at):
                continue
            kind = forced.pop() if forced else self.rng.choices(self.kinds, self.weights)[0]
            await getattr(self, kind)()
            self.counts[kind] += 1

    async def pause(self) -> None:
        ms = self.rng.randint(300, 2000)
        await self.admin.execute_command("CLIENT", "PAUSE", ms, "WRITE")
        await asyncio.sleep(ms / 1000)

    async def delay(self) -> None:
        assert self.proxy is not None, "delays go through the proxy of a single Redis"
        await self.proxy.delay(self.rng.uniform(0.3, 2.0), self.rng.choice(("up", "down", "both")))
        await asyncio.sleep(self.rng.uniform(1.0, 4.0))
        await self.proxy.clear()

    async def kill(self) -> None:
        await self.service.kill_and_restart()

    async def cut(self) -> None:
        assert self.proxy is not None, "cuts go through the proxy of a single Redis"
        for _ in range(self.rng.randint(1, 4)):
            await self.proxy.cut()
            await asyncio.sleep(self.rng.uniform(0.05, 0.5))

    async def primary(self) -> None:
        """kill -9 of a Redis Cluster primary under the load; back (as a replica) once its replica
        took over. Only with ``--cluster``."""
        assert self.cluster is not None, "a primary to kill needs --cluster"
        victim = self.rng.choice(await asyncio.to_thread(self.cluster.serving_primaries))
        await asyncio.to_thread(self.cluster.fail_over, victim)

    async def calm(self) -> None:
        """Every fault off: the proxy passes bytes at once, Redis takes writes (on a cluster, with
        neither proxy nor pauses, only the service was killed)."""
        if self.proxy is not None:
            await self.proxy.clear()
            await self.admin.execute_command("CLIENT", "UNPAUSE")

    def figures(self) -> dict[str, int]:
        return {"pauses": self.counts["pause"], "delays": self.counts["delay"], "kills": self.counts["kill"],
                "redis_primaries_killed": self.counts["primary"], "cuts": self.counts["cut"]}
