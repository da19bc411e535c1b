"""Open-loop load: calls started at a fixed rate whatever the answers — latency at a given load,
not capacity (a closed loop slows down with the server and hides its queueing).

    python benchmarks/open_loop.py [--rate 1000] [--seconds 8] [--positions 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atp_client import AtpClient
from atp_service import EmbeddedRedis
from benchmarks.ports import held_port

WARM_UP_CALLS = 50
"""Calls made one at a time, unmeasured, before an open loop starts."""

SETTLE_LIMIT_S = 30.0
"""The most ``settle`` waits for a quiet machine before a measured phase (``--settle-limit``): a
real run wants the quiet; a smoke run on a test machine that is seldom quiet only wants the
scripts to work, and passes a fraction of a second."""


@contextlib.contextmanager
def generator_gc_off() -> Iterator[None]:
    """The load generator's own garbage collector stays out of the measured window: a full
    collection of this process (25-40 ms here) delays every answer arriving meanwhile, and at
    1,600 calls/s one such pause alone decides the p99 of an 8 s run, whatever the server did.
    (``timeit`` turns the collector off for the same reason.) The server keeps its own."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


TICK_S = 0.001
"""How often an open loop's generator wakes to start the calls due since it last did."""

Call = Callable[[int, float], Awaitable[None]]
"""``one(n, due)``: the ``n``-th call of an open loop, due at ``due`` (a ``time.perf_counter()`` time)."""


async def open_loop(rate: float, seconds: float, one: Call, quiet_gc: bool = True) -> float:
    """Start ``one(n, due)`` at ``rate`` per second for ``seconds``: the ``n``-th call is due
    ``n / rate`` s after the start, and is given that time — every call due before ``seconds``, those
    due while the generator was held up past the end too; returns the seconds until the last one
    finished. The generator's collector is off meanwhile (``generator_gc_off``) unless
    ``quiet_gc`` is False (a generator sharing its process with the service under test).

    Each call times itself with ``latency_s``: from when it should have started, not from when the
    generator got round to starting it. A generator held up (its loop busy with answers or its
    collector, the machine's cores taken by the server, the service's own turn holding a loop they
    share) starts the calls due meanwhile late; timing them from their late start would leave that
    wait out of the figures (coordinated omission) — the queueing an open loop is there to show."""
    if not quiet_gc:
        return await _open_loop(rate, seconds, one)
    with generator_gc_off():
        return await _open_loop(rate, seconds, one)


def latency_s(due: float, started: float, now: float | None = None) -> float:
    """A call's latency (s): from its start where the generator started it on time, within a tick of
    ``due`` (its tick's wait is the generator's way of starting calls, not the server's doing), else
    from a tick after ``due`` — every wait past that was the generator's lateness, and counts.
    ``due``, ``started`` and ``now`` (default: now) are ``time.perf_counter()`` times."""
    return (time.perf_counter() if now is None else now) - min(started, due + TICK_S)


async def _open_loop(rate: float, seconds: float, one: Call) -> float:
    tasks: set[asyncio.Task[None]] = set()
    failed: list[BaseException] = []

    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            failed.append(task.exception())  # type: ignore[arg-type]

    def start(n: int) -> None:
        task = asyncio.ensure_future(one(n, begin + n / rate))
        tasks.add(task)
        task.add_done_callback(done)

    begin, n = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - begin) < seconds:
        while n < elapsed * rate:
            start(n)
            n += 1
        await asyncio.sleep(TICK_S)
    # Due before the end while the generator was held up past it: started late (timed from their due time), not
    # dropped — the longest waits of a run, and a count of calls that luck would cut short.
    while n < seconds * rate:
        start(n)
        n += 1
    await asyncio.gather(*tasks)
    if failed:  # a call failed in a way ``one`` does not count: no figure may leave it out unseen
        raise failed[0]
    return time.perf_counter() - begin


async def open_loop_unary(target: str, pick: Callable[[], tuple[str, str]], tag: str, rate: float, seconds: float,
                          measuring: Callable[[], None] = lambda: None
                          ) -> tuple[float, list[float], dict[str, int], int]:
    """One-unit ``Reserve`` calls at ``rate``: answered calls per second, their latencies (ms,
    ``latency_s``: a late start counts), the calls refused (by status code) and the calls started.
    ``measuring()`` is called once connected and warm, just before the first measured call: where a
    window of the server's CPU opens, so that it holds the measured calls only."""
    latencies: list[float] = []
    refused: dict[str, int] = {}
    started_calls = 0
    async with AtpClient(target) as client:
        # Connected and warm first: a lazy connect (~100 calls queued behind it at these rates) is
        # not what a running OMS sees on each call.
        await client.channel.channel_ready()
        for n in range(WARM_UP_CALLS):
            sku, loc = pick()
            await client.reserve(f"{tag}-warm-{n}", [(sku, loc, 1)], ttl_seconds=3600)

        async def one(n: int, due: float) -> None:
            nonlocal started_calls
            started = time.perf_counter()
            started_calls += 1
            sku, loc = pick()
            try:
                await client.reserve(f"{tag}-{n}", [(sku, loc, 1)], ttl_seconds=3600)
            except grpc.aio.AioRpcError as exc:  # shed at saturation: counted, not timed as an answer
                refused[exc.code().name] = refused.get(exc.code().name, 0) + 1
                return
            latencies.append(latency_s(due, started) * 1000)  # a late start is not hidden

        measuring()
        elapsed = await open_loop(rate, seconds, one)
        return len(latencies) / elapsed, latencies, refused, started_calls


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used so far (all its threads, ended ones
    included): its CPU-time clock (ns) where Linux lets us read it, else ``/proc`` (clock ticks)."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
    except OSError:
        return _stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def _stat_cpu_seconds(stat: Path) -> float:
    """User + system CPU seconds from a ``/proc`` ``stat`` file (a process's or a thread's), in clock ticks."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main_thread(pid: int) -> tuple[float, int]:
    """Of process ``pid``'s main thread (a Python server's event loop) so far: (CPU seconds,
    voluntary context switches: how often it slept waiting for something to do)."""
    task = Path(f"/proc/{pid}/task/{pid}")
    status = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines() if ":" in line)
    try:  # ns, as precise as ``cpu_seconds``: clock ticks (10 ms) are most of a short run's figure
        cpu = int((task / "schedstat").read_text().split()[0]) / 1e9
    except (OSError, IndexError, ValueError):
        cpu = _stat_cpu_seconds(task / "stat")
    return cpu, int(status["voluntary_ctxt_switches"])


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine so far."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def add_settle_limit(parser: argparse.ArgumentParser) -> None:
    """The ``--settle-limit`` option of a script whose measured phases ``settle`` first."""
    parser.add_argument("--settle-limit", type=float, default=SETTLE_LIMIT_S, metavar="SECONDS",
                        help="the most to wait for a quiet machine before each measured phase "
                             "(a smoke run on a busy machine: a fraction of a second)")


def use_settle_limit(seconds: float) -> None:
    """Every later ``settle`` of this process waits ``seconds`` at most (the ``--settle-limit`` given)."""
    global SETTLE_LIMIT_S
    SETTLE_LIMIT_S = seconds


async def settle(max_busy: float = 0.08, window_s: float = 0.5, limit_s: float | None = None) -> float:
    """Wait until the machine is quiet (at most ``max_busy`` of its CPUs busy over ``window_s``):
    a latency run must not share the CPUs with the previous phase's leftovers (a server still
    applying a bulk load, a database flushing). Returns the seconds waited (``limit_s`` at most;
    by default ``SETTLE_LIMIT_S``)."""
    limit_s = SETTLE_LIMIT_S if limit_s is None else limit_s
    began = time.perf_counter()
    while time.perf_counter() - began < limit_s:
        busy0, total0 = _cpu_times()
        await asyncio.sleep(window_s)
        busy1, total1 = _cpu_times()
        if total1 > total0 and (busy1 - busy0) / (total1 - total0) <= max_busy:
            break
    return time.perf_counter() - began


async def measured_open_loop(target: str, pid: int, pick: Callable[[], tuple[str, str]], tag: str, rate: float,
                             seconds: float) -> dict[str, Any]:
    """``open_loop_unary`` once the machine is quiet, with the CPU server ``pid`` used meanwhile (in
    cores): ops, latencies (ms), refused (by status), server_cpu (server_cpu_s: in seconds,
    unrounded), settled_s; and of its main thread (the event loop's) alone, over the same window:
    main_cpu (in cores, unrounded), main_cpu_s, main_sleeps (voluntary context switches), and
    window_s (the window: the measured calls, from the first one's start until the last one's answer;
    not connecting, not the warm-up calls), and calls (the calls started in it: the basis of a figure
    per call — not the rate times the window, which the calls' start and the last answers stretch)."""
    waited = await settle()
    before: dict[str, Any] = {}

    def measuring() -> None:
        # The process's window holds the thread's: read first at the start, last at the end.
        before.update(cpu=cpu_seconds(pid), main=main_thread(pid), began=time.perf_counter())

    ops, lat, refused, calls = await open_loop_unary(target, pick, tag, rate, seconds, measuring)
    main_after, sleeps_after = main_thread(pid)
    cpu_after, window = cpu_seconds(pid), time.perf_counter() - before["began"]
    cpu_before, (main_before, sleeps_before) = before["cpu"], before["main"]
    return {"ops": ops, "lat": lat, "refused": refused, "server_cpu": round((cpu_after - cpu_before) / window, 2),
            "server_cpu_s": cpu_after - cpu_before, "settled_s": round(waited, 1),
            "main_cpu": (main_after - main_before) / window, "main_cpu_s": main_after - main_before,
            "main_sleeps": sleeps_after - sleeps_before, "window_s": window, "calls": calls}


async def _run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from benchmarks.compare import Workload, seed_service  # compare imports this module
    from benchmarks.throughput import serve_command, service_ready, start

    with EmbeddedRedis(tmp / "redis", appendfsync="everysec") as redis_server:
        port, log = held_port(), tmp / "service.log"
        proc = start(serve_command(redis_server.url, port), service_ready(log), log)
        try:
            target = f"127.0.0.1:{port}"
            skus = max(1, args.positions // 10)
            w = Workload("uniform", [(f"s-{i:06d}", f"l-{j}") for i in range(skus) for j in range(10)], 1_000_000)
            await seed_service(target, w)
            print(f"service pid {proc.pid}: open loop at {args.rate}/s for {args.seconds} s", flush=True)
            m = await measured_open_loop(target, proc.pid, w.picker(5), "ol", args.rate, args.seconds)
        finally:
            proc.terminate()
            proc.wait(60)
    lat = m["lat"]
    return {"rate": args.rate, "ops": round(m["ops"]), "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2), "max_ms": round(max(lat), 1), "refused": m["refused"],
            "server_cpu": m["server_cpu"], "settled_s": m["settled_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description="Unary Reserve latency of the service at a fixed offered rate "
                                     "(one embedded Redis, --positions seeded first); prints the service's pid "
                                     "before the loop (for py-spy) and one JSON line after it.")
    parser.add_argument("--rate", type=float, default=1000.0, help="calls started per second")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--positions", type=int, default=100_000)
    add_settle_limit(parser)
    args = parser.parse_args()
    use_settle_limit(args.settle_limit)
    with tempfile.TemporaryDirectory(prefix="atp-open-loop-") as tmp:
        print(json.dumps(asyncio.run(_run(args, Path(tmp)))))


if __name__ == "__main__":
    main()
