"""Reservations over 1, 2, 4, … service processes sharing one keyspace on a Redis Cluster
(``ownership = leases``), on this machine.

An embedded Redis Cluster (3 primaries, a replica each) is started once (or ``--cluster-url`` names
one, flushed before each step). Each step — a number of service processes, a mode and a kind —
starts that many ``atp-service serve`` processes on a flushed keyspace, waits until they have
spread the groups evenly, stocks ``--skus`` x ``--locations`` positions with 1,000,000 units each
(nothing is refused for lack of stock), and runs ``--load-processes`` load generators
(``scale_load.py``, a process each) for ``--seconds``:
  routed    - ``RoutedClient``: each call to the owner of its group;
  forwarded - ``AtpClient`` to a random process per call, which forwards what it does not own;
  unary     - one-line ``Reserve`` calls, ``--in-flight`` per load process;
  stream    - ``ReserveStream`` batches of ``--batch`` reservations (forwarded: each batch over
              every SKU, split by owner by the process that takes it).
Then every position is read through ``RoutedClient`` and checked: ``oversold`` (units reserved
and committed beyond on hand) and ``hold_mismatches`` (positions holding fewer units than were
acknowledged held and those of calls in doubt read held by id first, ``scale_check.py``, or more than those
acknowledged plus the units of calls that failed with no definite answer: such a call, counted as an error, may
have been applied, R7; a stream item refused ``GROUP_MOVED`` was not) must
be 0; beside them ``holds_lost`` (the positions holding fewer) and ``in_doubt_held`` (units held of calls in
doubt). One JSON line per step: processes, mode, kind, ops/s
(reservations held per second), p50/p99 ms (per call, or per batch message), errors, the service
processes' CPU seconds per 1,000 reservations (``/proc/<pid>/stat``, until every generator has its
answers in: the window the reservations are counted in), the cores each service process,
load generator and Redis node kept busy over the window (``service_cores``, ``load_cores``,
``redis_cores``, busiest first: one near 1.0 is what limited the step) and the whole host (``host_cores``:
what no process is charged for shows as the difference), the calls forwarded meanwhile
(``forwarded_calls``: none in a routed step while the clients route right), and the check. Exits 1 if
any check fails. ``--stall`` stops each service process in turn past its lease over the window (``scale_stall.py``).

    python benchmarks/scale.py [--max-processes N | --processes 1,2] [--steps unary-routed,stream-routed]
                               [--load-processes K] [--seconds 10] [--stall 2 --lease-ms 700]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from redis.cluster import RedisCluster

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from atp_client import AtpClient, RoutedClient, timestamp
from atp_client._stock import record_patiently
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.storage.embedded_cluster import EmbeddedCluster
from benchmarks import scale_check
from benchmarks.ports import held_port
from benchmarks.scale_check import merged, patiently
from benchmarks.scale_load import WARMUP_S, LoadSpec, Tally, location_name, run_load, sku_name
from benchmarks.scale_stall import GAP_S, Stalls
from benchmarks.throughput import serve_command

STOCK = 1_000_000
"""Units per position: no step comes near it."""

TICKS = os.sysconf("SC_CLK_TCK")

STEPS = ("unary-routed", "unary-forwarded", "stream-routed", "stream-forwarded")
"""Each process count's steps, ``kind-mode``, in this order unless ``--steps`` names others."""


class Services:
    """``n`` leased ``atp-service serve`` processes on the cluster, each logging to ``tmp``."""

    def __init__(self, url: str, n: int, args: argparse.Namespace, tmp: Path, name: str) -> None:
        self.ports = [held_port() for _ in range(n)]
        self.addresses = tuple(f"127.0.0.1:{port}" for port in self.ports)
        self.metrics_ports = [held_port() for _ in range(n)]
        self.logs = [tmp / f"service-{n}-{name}-{i}.log" for i in range(n)]
        env = {**os.environ, "ATP_REDIS_CLUSTER": "true", "ATP_INPUT_STREAMS": ""}
        extra = ("--host", "127.0.0.1", "--shards", str(args.shards), "--ownership", "leases",
                 "--log-level", args.log_level,
                 *(("--lease-ms", str(args.lease_ms)) if args.lease_ms else ()),
                 *(("--balance-ms", str(args.balance_ms)) if args.balance_ms else ()))
        self.procs = [subprocess.Popen(serve_command(url, port, mport, *extra), env=env, stdout=log.open("wb"),
                                       stderr=subprocess.STDOUT, start_new_session=True)
                      for port, mport, log in zip(self.ports, self.metrics_ports, self.logs, strict=True)]

    async def ready(self, shards: int) -> None:
        """Every process's routing table the same and balanced: every group owned, each process
        owning at least its share (rounded down)."""
        deadline = time.monotonic() + 90
        async with _clients(self.addresses) as clients:
            while not await self._balanced(clients, shards):
                self._alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {len(self.addresses)} processes did not spread the groups in 90 s")
                await asyncio.sleep(0.1)

    async def _balanced(self, clients: list[AtpClient], shards: int) -> bool:
        try:
            tables = await asyncio.gather(*(c.stub.GetRouting(pb.GetRoutingRequest(), timeout=5) for c in clients))
        except grpc.aio.AioRpcError:  # not serving yet
            return False
        views = [{r.group: r.address for r in t.groups} for t in tables]
        counts = Counter(views[0].values())
        return (all(v == views[0] for v in views) and len(views[0]) == shards and all(views[0].values())
                and min(counts[a] for a in self.addresses) >= shards // len(self.addresses))

    def _alive(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                raise RuntimeError(f"a service process exited ({proc.returncode}):\n{log.read_text()[-3000:]}")

    def cpu_s(self) -> float:
        """User + system CPU seconds of every service process so far (``/proc/<pid>/stat``)."""
        return sum(cpu_s(proc.pid) for proc in self.procs)

    def forwarded(self) -> int:
        """Calls the processes forwarded to another (or redirected) so far: a routed step forwards none
        while every client's routing table is right."""
        total = 0.0
        for port in self.metrics_ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
                text = reply.read().decode()
            total += sum(sample.value for family in text_string_to_metric_families(text)
                         if family.name == "atp_forwarded_calls" for sample in family.samples
                         if sample.name == "atp_forwarded_calls_total")
        return int(total)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            proc.wait(60)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime: fields 14 and 15 of stat(5)


class Cores:
    """The cores each of some processes kept busy over a window: which part of a step saturated — a
    service process, a load generator or a Redis node near 1.0 is that step's limit."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._start = {pid: cpu_s(pid) for pids in groups.values() for pid in pids}
        self._host = host_busy_s()
        self._t0 = time.monotonic()

    def used(self) -> dict[str, Any]:
        """Per group, each process's cores over the window so far, busiest first."""
        span = max(1e-9, time.monotonic() - self._t0)
        used: dict[str, Any] = {
            f"{name}_cores": sorted((round((cpu_s(pid) - self._start[pid]) / span, 2) for pid in pids), reverse=True)
            for name, pids in self.groups.items()}
        return {**used, "host_cores": round((host_busy_s() - self._host) / span, 2)}


def host_busy_s() -> float:
    """CPU seconds the whole host spent busy so far (``/proc/stat``: every field but idle and iowait),
    which counts work no process above is charged for (the kernel's network stack, other processes)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / TICKS


class _clients:
    """``AtpClient`` to each address, closed on exit."""

    def __init__(self, addresses: tuple[str, ...]) -> None:
        self.clients = [AtpClient(a, timeout_s=30) for a in addresses]

    async def __aenter__(self) -> list[AtpClient]:
        return self.clients

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(c.close() for c in self.clients))


def positions(args: argparse.Namespace) -> list[tuple[str, str]]:
    return [(sku_name(s), location_name(loc)) for s in range(args.skus) for loc in range(args.locations)]


async def seed(address: str, args: argparse.Namespace) -> None:
    """A count of ``STOCK`` at every position, through one process (it sends each fact to its owner)."""
    at = timestamp(int(time.time() * 1000) - 1000)
    facts = [pb.Fact(event_id=f"seed-{sku}-{loc}", source="bench", kind=pb.FACT_KIND_COUNT, sku=sku, location=loc,
                     quantity=STOCK, event_time=at) for sku, loc in positions(args)]
    async with AtpClient(address, timeout_s=60) as client:
        for i in range(0, len(facts), 5000):
            # A group being taken over (a lease lost under load) refuses its facts, maybe after others were
            # recorded: sent again whole, as the service asks (E8: a fact recorded already is not applied twice).
            results = await record_patiently(client, facts[i:i + 5000])
            refused = [r for r in results if r.outcome not in (pb.FACT_OUTCOME_APPLIED, pb.FACT_OUTCOME_DUPLICATE)]
            if refused:
                raise RuntimeError(f"seeding: {len(refused)} facts not applied, e.g. {refused[0]}")


async def check(addresses: tuple[str, ...], args: argparse.Namespace, acked: Counter[tuple[str, str]],
                in_doubt: dict[str, tuple[str, str]]) -> dict[str, int]:
    """``scale_check.check`` of every position of the step; ``in_doubt``: each call in doubt's id and position."""
    return await scale_check.check(addresses, positions(args), acked, in_doubt)


async def _patiently(client: RoutedClient, keys: list[tuple[str, str]]) -> list[pb.Availability]:
    """The positions, waiting out a group being taken over (a lease lost under load) for up to a minute."""
    return await patiently(lambda: client.availability(keys))


async def load(services: Services, kind: str, mode: str, args: argparse.Namespace, k: int
               ) -> tuple[list[Tally], float, dict[str, Any]]:
    """``k`` load generators; the services' CPU seconds over the window their reservations are counted
    in (from the barrier until every generator has its answers in), and the cores each service process,
    load generator and Redis node (``args.redis_pids``) used over the window's seconds."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(k + 1), ctx.Queue()
    specs = [LoadSpec(w, kind, mode, services.addresses, args.skus, args.locations, args.seconds, args.in_flight,
                      args.batch, f"{kind[0]}{mode[0]}{len(services.addresses)}", args.warmup)
             for w in range(k)]
    procs = [ctx.Process(target=run_load, args=(spec, barrier, results), daemon=True) for spec in specs]
    for proc in procs:
        proc.start()
    try:
        try:
            await asyncio.to_thread(barrier.wait, 120)
        except threading.BrokenBarrierError:  # a generator failed (it says why) or none came in time
            raise RuntimeError(await asyncio.to_thread(results.get, True, 30)) from None
        before, forwarded = services.cpu_s(), await asyncio.to_thread(services.forwarded)
        cores = Cores({"service": [p.pid for p in services.procs], "load": [p.pid for p in procs if p.pid],
                       "redis": args.redis_pids})
        stalls = Stalls(services.procs, args.stall)
        stalling = asyncio.ensure_future(stalls.run() if args.stall else asyncio.sleep(0))
        try:
            await asyncio.sleep(args.seconds)
            used = cores.used()
            tallies = [await asyncio.to_thread(results.get, True, args.seconds + 120) for _ in procs]
        finally:  # every process going on again before it is read: its CPU, its forwarding, the check
            stalling.cancel()
            await asyncio.wait([stalling])
        used.update({"stalls": stalls.count} if args.stall else {})
        # Read once every generator has its answers in: the requests in flight when the seconds ran out
        # (a stream's 8 messages on each, seconds of backlog at 16 processes) are answered after them and
        # counted in the reservations, so their CPU and their forwarding count too.
        cpu = services.cpu_s() - before
        used["forwarded_calls"] = await asyncio.to_thread(services.forwarded) - forwarded
    finally:
        for proc in procs:
            proc.join(30)
    failed = [t for t in tallies if isinstance(t, str)]
    if failed:
        raise RuntimeError("; ".join(failed))
    return tallies, cpu, used


def row(n: int, kind: str, mode: str, tallies: list[Tally], cpu: float, k: int) -> dict[str, Any]:
    calls = sum(t.calls for t in tallies)
    lat = [x for t in tallies for x in t.latencies_ms] or [0.0]
    errors = sum((t.errors for t in tallies), Counter[str]())
    window = max(t.window_s for t in tallies)
    return {"processes": n, "mode": mode, "kind": kind, "load_processes": k, "ops": round(calls / window),
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "errors": sum(errors.values()), **({"error_kinds": dict(errors)} if errors else {}),
            "service_cpu_s_per_1000": round(cpu / max(1, calls) * 1000, 3), "reservations": calls,
            **({"messages": sum(t.messages for t in tallies)} if kind == "stream" else {})}


async def step(url: str, n: int, kind: str, mode: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """One measured row, on fresh processes and a flushed keyspace."""
    began = time.monotonic()
    with RedisCluster.from_url(url) as cluster:
        cluster.flushall(target_nodes=RedisCluster.PRIMARIES)
    services = Services(url, n, args, Path(args.logs) if args.logs else tmp, f"{kind}-{mode}")
    try:
        await services.ready(args.shards)
        await seed(services.addresses[0], args)
        k = args.load_processes or n
        setup_s = round(time.monotonic() - began, 1)
        tallies, cpu, used = await load(services, kind, mode, args, k)
        acked = sum((t.acked for t in tallies), Counter[tuple[str, str]]())
        in_doubt = merged(t.in_doubt for t in tallies)
        checked = await check(services.addresses, args, acked, in_doubt)
        return {**row(n, kind, mode, tallies, cpu, k), **used, **checked,
                "setup_s": setup_s, "step_s": round(time.monotonic() - began, 1)}
    finally:
        services.stop()


async def measure(url: str, args: argparse.Namespace, tmp: Path) -> bool:
    """Every step, one JSON line each; False if any check failed."""
    clean = True
    for n in args.processes:
        for kind, mode in (step.split("-") for step in args.steps):
            out = await step(url, n, kind, mode, args, tmp)
            clean = clean and out["oversold"] == 0 and out["hold_mismatches"] == 0
            print(json.dumps(out), flush=True)
    return clean


def doubling(limit: int) -> list[int]:
    """1, 2, 4, … up to ``limit``, and ``limit`` itself."""
    counts = [1]
    while counts[-1] * 2 <= limit:
        counts.append(counts[-1] * 2)
    return counts + ([limit] if counts[-1] != limit else [])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-processes", type=int, default=os.cpu_count() or 1,
                        help="service processes of the last step (default: the cores here)")
    parser.add_argument("--processes", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="the steps' process counts instead, e.g. 2 or 1,3")
    parser.add_argument("--load-processes", type=int, default=0, help="load generators (default: as many as "
                        "service processes in the step)")
    parser.add_argument("--steps", type=lambda s: s.split(","), default=list(STEPS),
                        help=f"the kind-mode steps run for each process count, in order (default {','.join(STEPS)})")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per step")
    parser.add_argument("--warmup", type=float, default=WARMUP_S, help="unmeasured seconds of calls per load "
                        f"generator before each step's window (default {WARMUP_S})")
    parser.add_argument("--skus", type=int, default=5000)
    parser.add_argument("--locations", type=int, default=4)
    parser.add_argument("--in-flight", type=int, default=64, help="unary calls in flight per load generator")
    parser.add_argument("--batch", type=int, default=200, help="reservations per stream message")
    parser.add_argument("--shards", type=int, default=0, help="shard groups (default: 16, or 4 per process of "
                        "the largest step when more)")
    parser.add_argument("--lease-ms", type=int, default=0, help="the processes' lease (default: the service's)")
    parser.add_argument("--balance-ms", type=int, default=0, help="the processes' balancing period, each pass "
                        "handing over at most a group (default: the service's, a third of the lease)")
    parser.add_argument("--logs", default="", help="a directory to keep the service processes' logs in "
                        "(service-N-KIND-MODE-I.log; default: a temporary one, removed at the end)")
    parser.add_argument("--log-level", default="WARNING", help="the service processes' (e.g. INFO with --logs: "
                        "every group taken and handed over)")
    parser.add_argument("--stall", type=float, default=0.0, help="stop one service process at a time for these "
                        "seconds (SIGSTOP, then SIGCONT; longer than the lease, it loses its groups), each in turn, "
                        f"{GAP_S:g} s apart, over each step's window: a starved process on purpose (time and CPU "
                        "figures then mean nothing; the check and the errors do)")
    parser.add_argument("--cluster-url", default="", help="a Redis Cluster to use (flushed!) instead of starting one")
    args = parser.parse_args()
    if args.stall < 0:
        parser.error(f"--stall: seconds must be 0 (none) or more, got {args.stall:g}")
    if unknown := set(args.steps) - set(STEPS):
        parser.error(f"--steps: unknown {', '.join(sorted(unknown))}; choose from {', '.join(STEPS)}")
    args.processes = args.processes or doubling(args.max_processes)
    args.shards = args.shards or max(16, 4 * max(args.processes))
    return args


def main() -> None:
    args = parse_args()
    # A SIGTERM (``timeout``, a sitting's time running out) unwinds like Ctrl-C: the steps' ``finally`` stop their
    # service processes (sessions of their own, which the signal does not reach) and the embedded cluster.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="atp-scale-") as tmp:
        if args.cluster_url:
            args.redis_pids = []  # another machine's, or not ours to read
            clean = asyncio.run(measure(args.cluster_url, args, Path(tmp)))
        else:
            with EmbeddedCluster(Path(tmp) / "cluster", primaries=3, replicas=1) as cluster:
                args.redis_pids = [node.process.pid for node in cluster.primaries + cluster.replicas
                                   if node.process is not None]
                clean = asyncio.run(measure(cluster.url, args, Path(tmp)))
    sys.exit(0 if clean else 1)


if __name__ == "__main__":
    main()
