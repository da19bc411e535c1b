"""Faults against the running service over real gRPC and real Redis, then a check that it kept
every promise (issue 15: R2, R3, R7, R8, E10, C4).

    python benchmarks/fault_soak.py [--seconds 60] [--seed 1] [--shards 4] [--force-each]
    make soak SECONDS=300

It starts redis-server (AOF, appendfsync always), ``tcp_delay.py`` in front of it and
``atp-service serve`` talking to Redis through the proxy with a short Redis timeout (0.5 s). For
--seconds the callers of ``soak_load.py`` send single- and multi-shard Reserves, Confirms,
Releases, Fulfils, SHIPMENTs naming reservations, receipts and sales, and ReserveStreams, with
deadlines from 1 ms to 2 s, while ``soak_faults.py`` injects Redis write pauses, proxy delays, connections
to Redis reset (often mid-reply) and kill -9 + restart at random (seeded). Then, every fault off:

  the live service, as the faults left it: every shard answers a read and a write; its memory
    equals the durable state (a replay of snapshots and logs, E10); the channel feeds converge to
    the curated value of the durable state (C4);
  after one more restart (kill -9: recovery from the log alone; ``--final-stop term`` for a graceful
    stop, whose final snapshots come from memory): every shard answers; every acknowledged reservation is there in its
    acknowledged state or a successor (R3, R7), every acknowledged fact is applied once; reserved
    and committed per position equal what the reservations hold; no DC position promises more
    than it has (no fact there could explain it); the answers equal the durable state; the
    channel feeds converge to it.

Prints one JSON line of figures; each violation is a ``violation: ...`` line on stderr, and the
exit status is 1 if there was any. Polls are bounded: a check that does not come clean in time
counts what it still finds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import EmbeddedRedis
from atp_service.channels.estate import Estate, load_estate
from atp_service.storage.embedded_cluster import EmbeddedCluster
from benchmarks import soak_check as check
from benchmarks.ports import held_port
from benchmarks.soak_faults import Faults, ServiceDown, ServiceProcess
from benchmarks.soak_load import Book, Caller, Layout, fact_feed, lifecycles
from benchmarks.soak_streams import streams
from benchmarks.tcp_delay import DelayProxyProcess
from benchmarks.throughput import serve_command
from reservation import Limits

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "atp:"
ESTATE = """
[[locations]]
ids = ["dc-1", "dc-2"]
type = "dc"
[[locations]]
ids = ["store-1", "store-2"]
type = "store"

[[channels]]
name = "web"
sells_from = ["dc-1", "dc-2", "store-1"]
buffer_units = 1
low_stock_threshold = 1
throttle_ms = 200
rate_limit_per_s = 1000.0

[[channels]]
name = "pickup"
sells_from = ["dc-1", "store-1", "store-2"]
per_location = true
throttle_ms = 200
rate_limit_per_s = 1000.0
"""
# Short throttles: the feeds converge within a second once the faults stop.
STOP_S = 30.0
"""Bound of a graceful stop."""


def service_command(proxy_url: str, port: int, estate: Path, shards: int, snapshot_every: int) -> list[str]:
    return serve_command(proxy_url, port, -1, "--shards", str(shards), "--estate", str(estate),
                         "--snapshot-every-entries", str(snapshot_every))


def service_env(redis_timeout_s: float) -> dict[str, str]:
    # No input streams: every fact comes over gRPC, so each one has an answer to check.
    return {**os.environ, "ATP_REDIS_TIMEOUT_S": str(redis_timeout_s), "ATP_INPUT_STREAMS": ""}


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.rng = random.Random(args.seed)
        self.layout = Layout.make(args.shards)
        self.book = Book()
        self.found: dict[str, list[str]] = {}
        self.figures: dict[str, Any] = {"seconds": args.seconds, "seed": args.seed, "shards": args.shards}
        self.estate_path = work / "estate.toml"
        self.estate_path.write_text(ESTATE)
        self.estate: Estate = load_estate(self.estate_path)
        self._suspects: set[str] | None = None

    def note(self, kind: str, lines: list[str], phase: str) -> None:
        """Violations of one kind, found in ``phase`` ("live": as the faults left the service;
        "restarted": after the last restart)."""
        self.found.setdefault(kind, []).extend(f"{phase}: {line}" for line in lines)

    async def run(self) -> None:
        if self.args.cluster:
            await self.run_on_cluster()
            return
        with EmbeddedRedis(self.work / "redis", appendfsync="always") as redis_server:
            proxy = DelayProxyProcess(f"127.0.0.1:{redis_server.port}", self.work / "proxy.log")
            proxy_port = await proxy.start()
            port = held_port()
            cmd = service_command(f"redis://127.0.0.1:{proxy_port}/0", port, self.estate_path, self.args.shards,
                                  self.args.snapshot_every)
            service = ServiceProcess(cmd, service_env(self.args.redis_timeout), self.work / "service.log", port, ROOT)
            admin = aioredis.Redis.from_url(redis_server.url, socket_timeout=10)
            try:
                await self.soak_and_stop(service, Faults(self.rng, admin, proxy, service, self.args.faults), port,
                                         admin)
            finally:
                await proxy.stop()

    async def run_on_cluster(self) -> None:
        """The same soak on a Redis Cluster (3 primaries, a replica each): no proxy in the way (the
        cluster tells the client every node's own address), so the faults are the service's."""
        with EmbeddedCluster(self.work / "cluster", primaries=3, replicas=1) as cluster:
            port = held_port()
            cmd = service_command(cluster.url, port, self.estate_path, self.args.shards, self.args.snapshot_every)
            # A primary killed may take its newest writes with it unless a replica confirmed them.
            env = {**service_env(self.args.redis_timeout), "ATP_REDIS_CLUSTER": "true",
                   "ATP_REDIS_WAIT_REPLICAS": str(self.args.wait_replicas),
                   "ATP_REDIS_WAIT_TIMEOUT_MS": str(int(self.args.redis_timeout * 500))}
            service = ServiceProcess(cmd, env, self.work / "service.log", port, ROOT)
            admin = aioredis.RedisCluster.from_url(cluster.url, socket_timeout=10)
            self.figures["redis"] = "cluster"
            faults = Faults(self.rng, admin, None, service, self.args.faults, cluster=cluster)
            await self.soak_and_stop(service, faults, port, admin)

    async def soak_and_stop(self, service: ServiceProcess, faults: Faults, port: int, admin: Any) -> None:
        """``soak``, then the service stopped and the figures of what was injected noted."""
        try:
            await self.soak(service, faults, port, admin)
        except ServiceDown as exc:
            self.note("service_down", [str(exc)], "soak")
        finally:
            self.figures["faults"] = faults.figures()
            self.figures["service_exits"] = dict(service.exits)
            await service.stop(STOP_S)
            await admin.aclose()

    async def soak(self, service: ServiceProcess, faults: Faults, port: int, admin: Any) -> None:
        await service.start()
        # the client's own reconnect bound (reconnect_max_s, 1 s) reaches the service within a second of each restart
        async with AtpClient(f"127.0.0.1:{port}") as load, AtpClient(f"127.0.0.1:{port}") as checker:
            await self.seed(checker.stub)
            async with supervised(service):
                await self.load(load.stub, faults)
                await faults.calm()
                checks_began = time.monotonic()
                await self.check_live(checker.stub, admin)
            if self.args.final_stop == "kill":
                self.figures["final_stop"] = "kill -9"
                await service.kill_and_restart()
            else:
                self.figures["final_stop"] = await service.stop(STOP_S)
                await service.start()
            async with supervised(service):
                await self.check_restarted(checker.stub, admin)
            self.figures["check_seconds"] = round(time.monotonic() - checks_began, 1)

    async def seed(self, stub: Any) -> None:
        facts = self.layout.seed_facts(int(time.time() * 1000))
        resp = await stub.RecordEvents(pb.RecordEventsRequest(events=facts), timeout=60)
        for f in facts:
            self.book.facts_tried[f.event_id] = (f.sku, f.location)
        self.book.ack_facts(facts, list(resp.results))

    async def load(self, stub: Any, faults: Faults) -> None:
        a = self.args
        began = time.monotonic()

        def caller() -> Caller:
            return Caller(stub, self.book, self.layout, random.Random(self.rng.random()), float("inf"),
                          (a.min_deadline, a.max_deadline))

        callers = [(lifecycles, f"o{i}") for i in range(a.lifecycles)] + [
            (streams, f"s{i}") for i in range(a.streams)] + [(fact_feed, "f0")]
        made = [(fn, name, caller()) for fn, name in callers]
        tasks = [asyncio.ensure_future(fn(c, name)) for fn, name, c in made]
        try:
            await faults.run(began + a.seconds, a.force_each)
        finally:
            for _, _, c in made:
                c.stop_at = 0  # callers finish the step they are in, or are cancelled below
            done, pending = await asyncio.wait(tasks, timeout=5)
            for task in pending:
                task.cancel()  # cancelled mid-call: one more thing the service must survive
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if (exc := task.exception()) is not None:
                raise exc
        self.figures["load_seconds"] = round(time.monotonic() - began, 1)

    async def durable(self, admin: Any) -> check.Durable:
        return await check.read_durable(admin, PREFIX, self.args.shards, Limits())

    async def check_live(self, stub: Any, admin: Any) -> None:
        """The service as the faults left it: alive per shard, memory = log, feeds = curated log."""
        self.note("wedged", await check.liveness(stub, self.layout, self.book, "live", self.args.check_bound), "live")
        await self.converged(stub, admin, "live")

    async def converged(self, stub: Any, admin: Any, phase: str) -> None:
        """Memory and the channel feeds agree with the durable state, within the check bound."""
        self._suspects = None
        self.note("divergences", await check.until_clean(guarded(
            lambda: self._divergences(stub, admin)), self.args.check_bound), phase)
        self.note("channel_mismatches", await check.until_clean(guarded(
            lambda: self._channels(admin)), self.args.check_bound), phase)

    async def check_restarted(self, stub: Any, admin: Any) -> None:
        def note(kind: str, lines: list[str]) -> None:
            self.note(kind, lines, "restarted")

        note("wedged", await check.liveness(stub, self.layout, self.book, "restarted", self.args.check_bound))
        note("lost", await guarded(lambda: check.lost_reservations(stub, self.book))())
        try:
            lost, twice = await check.lost_facts(stub, self.layout, self.book)
        except grpc.aio.AioRpcError as exc:
            lost, twice = [f"the service did not answer the check: {exc.code().name} {exc.details()}"], []
        note("lost", lost)
        note("facts_applied_twice", twice)
        # The shards are read one after another while the service runs: a cross-shard change (a hold
        # expiring) between two reads shows in that read only. A mismatch that stays is a violation.
        note("hold_mismatches", await check.until_clean(
            lambda: self._hold_mismatches(admin), self.args.check_bound))
        durable = await self.durable(admin)
        over = check.oversold(durable, self.book)
        note("oversold", [line for line, _ in over])
        self.figures["oversold"] = sum(units for _, units in over)
        await self.converged(stub, admin, "restarted")
        note("idempotency_violations", self.book.idempotency)

    async def _hold_mismatches(self, admin: Any) -> list[str]:
        return check.hold_mismatches(await self.durable(admin))

    async def _divergences(self, stub: Any, admin: Any) -> list[str]:
        """After a full comparison, only what differed is compared again (a poll of a long soak's
        every reservation would take a while; after the faults only expiries still change state)."""
        durable = await self.durable(admin)
        ids = self._suspects if self._suspects is not None else set(durable.reservations()) | set(self.book.requests)
        found, self._suspects = await check.divergences(stub, durable, sorted(ids), self.layout.positions())
        return found

    async def _channels(self, admin: Any) -> list[str]:
        return await check.channel_mismatches(admin, PREFIX, await self.durable(admin), self.estate)

    def report(self) -> dict[str, Any]:
        f, book = self.figures, self.book
        f["calls"] = book.figures()
        f["reservations_tried"] = len(book.requests)
        f["acknowledged_reservations_checked"] = len(book.acked)
        f["acknowledged_facts_checked"] = len(book.facts_acked)
        shards = {m.group(1) for line in self.found.get("wedged", []) if (m := re.search(r": shard (\d+)", line))}
        f["wedged"] = len(shards)
        for kind in ("service_down", "lost", "facts_applied_twice", "divergences", "hold_mismatches",
                     "channel_mismatches", "idempotency_violations"):
            f[kind] = len(self.found.get(kind, []))
        f.setdefault("oversold", 0)
        f["ok"] = not any(self.found.values())
        return f


@contextlib.asynccontextmanager
async def supervised(service: ServiceProcess) -> AsyncIterator[None]:
    """Meanwhile a service that exits on its own is restarted (counted in ``service_exits``): the
    service may stop when a shard fails, for its supervisor to restart it (issue 15)."""
    watchdog = asyncio.ensure_future(service.watch())
    try:
        yield
    finally:
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog


def guarded(check_fn: Any) -> Any:
    """A check the service cannot answer finds that, instead of ending the soak."""
    async def run() -> list[str]:
        try:
            found: list[str] = await check_fn()
        except grpc.aio.AioRpcError as exc:
            return [f"the service did not answer the check: {exc.code().name} {exc.details()}"]
        return found
    return run


def violations(found: dict[str, list[str]], per_kind: int = 20) -> list[str]:
    out = []
    for kind, lines in found.items():
        out += [f"violation: {kind}: {line}" for line in lines[:per_kind]]
        if len(lines) > per_kind:
            out.append(f"violation: {kind}: ... and {len(lines) - per_kind} more")
    return out


def service_errors(log: Path, most: int = 40) -> list[str]:
    """The service's ERROR lines and tracebacks, for a failed run whose directory is about to go."""
    if not log.exists():
        return []
    lines = log.read_text(errors="replace").splitlines()
    return [f"service: {ln}" for ln in lines if " ERROR " in ln or "Error" in ln][-most:]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="load and faults (the checks come after)")
    p.add_argument("--seed", type=int, default=1, help="draws callers' choices and the faults")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--lifecycles", type=int, default=8, help="order-lifecycle callers")
    p.add_argument("--streams", type=int, default=2, help="ReserveStream callers")
    p.add_argument("--redis-timeout", type=float, default=0.5, help="the service's ATP_REDIS_TIMEOUT_S")
    p.add_argument("--snapshot-every", type=int, default=300,
                   help="log entries per shard between snapshots (small: snapshots and trims happen under the faults)")
    p.add_argument("--faults", type=lambda s: tuple(k for k in s.split(",") if k), default=None,
                   help="kinds to inject, comma-separated: pause,delay,kill,cut,primary (empty: none; default: "
                        "pause,delay,kill,cut; on a cluster kill,primary)")
    p.add_argument("--cluster", action="store_true",
                   help="run on a Redis Cluster (3 primaries, a replica each) with ATP_REDIS_CLUSTER")
    p.add_argument("--wait-replicas", type=int, default=1,
                   help="with --cluster: the service's ATP_REDIS_WAIT_REPLICAS (0 lets a killed primary lose "
                        "acknowledged writes: the soak then reports them lost)")
    p.add_argument("--min-deadline", type=float, default=0.001, help="shortest client deadline (s)")
    p.add_argument("--max-deadline", type=float, default=2.0, help="longest client deadline (s)")
    p.add_argument("--force-each", action="store_true", help="at least one fault of every kind, however short the run")
    p.add_argument("--check-bound", type=float, default=30.0,
                   help="seconds a shard may take to answer, and memory or a channel feed to agree with the log")
    p.add_argument("--final-stop", choices=("kill", "term"), default="kill",
                   help="the restart before the last checks: kill -9 (recovery from the log alone: R7 at its "
                        "strictest) or SIGTERM (a graceful stop, its final snapshots; its exit status is reported)")
    p.add_argument("--workdir", type=Path, help="keep Redis data and logs here (default: a temporary directory)")
    args = p.parse_args(argv)
    if args.faults is None:
        args.faults = ("kill", "primary") if args.cluster else ("pause", "delay", "kill", "cut")
    elif args.cluster and set(args.faults) - {"kill", "primary"}:
        p.error("--faults: on a cluster kill and primary (pauses and delays go through the proxy of a single Redis)")
    elif not args.cluster and "primary" in args.faults:
        p.error("--faults: primary (a Redis Cluster primary killed) needs --cluster")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="atp-soak-")))
        work.mkdir(parents=True, exist_ok=True)
        soak = Soak(args, work)
        asyncio.run(soak.run())
        figures = soak.report()
        odd = [f"note: {kind} answered {code}: {detail}" for (kind, code), detail in sorted(soak.book.odd.items())]
        for line in odd + violations(soak.found) + ([] if figures["ok"] else service_errors(work / "service.log")):
            print(line, file=sys.stderr)
    print(json.dumps(figures), flush=True)
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
