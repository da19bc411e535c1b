"""The service's CPU per unary Reserve beside Python gRPC's own, at the same offered rates, in one run.

    python benchmarks/unary_cost.py [--rates 500,1000,2000,half] [--seconds 8] [--slices 4]
                                    [--redis unix|tcp] [--profile-rate 1000 [--profile-out FILE]] [--native-rate 1000]
                                    [--settle-limit 30]

Starts the no-op server (``noop_server.py``: same gRPC stack and messages, no work) and
``atp-service serve`` against an embedded Redis (AOF everysec) on the same host, reached over its
unix socket as ``serve`` reaches the Redis it starts itself (``--redis tcp``: over loopback TCP,
whose sender also runs the receiver's TCP stack), seeds 10,000 positions, measures the no-op
ceiling in closed loop, then for each rate (``half``: 50 % of that ceiling) runs the same
open loop of one-line ``Reserve`` calls against each server, ``--seconds`` each, in ``--slices``
turns (no-op, service, service, no-op, ...: the drift of a shared VM's speed during the run falls
on both alike). One JSON line per rate: each server's CPU per call (µs), their ratio, the service's
p50/p99 and refusals.

Each rate's line also gives, per server, its event loop's thread alone: CPU per call
(``*_loop_thread_us``; the rest is gRPC core's own threads) and how often per call it slept
waiting for work (``*_loop_sleeps_per_call``). With ``--native-rate`` (``perf`` must be installed),
one more open loop per server splits that thread's CPU per call by library (the interpreter,
gRPC's Cython layer, uvloop, the kernel...).

With ``--profile-rate`` (py-spy must be installed and allowed to attach), one more open loop at
that rate is sampled by ``py-spy record --nonblocking`` and the service's CPU per call is broken
down by where its Python stack was (``PARTS``, the innermost frame that belongs to one of them);
``--profile-out`` keeps the samples.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atp_service import EmbeddedRedis
from benchmarks.compare import Tally, Workload, grpc_unary, seed_service
from benchmarks.open_loop import (
    add_settle_limit,
    cpu_seconds,
    main_thread,
    measured_open_loop,
    open_loop_unary,
    settle,
    use_settle_limit,
)
from benchmarks.perf_record import PerfFailed, recording
from benchmarks.ports import held_port
from benchmarks.throughput import ROOT, serve_command, service_ready, start

POSITIONS = 10_000
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # (part, substrings of a frame's "function (file)" text); the innermost matching frame decides.
    ("reply", ("reserve_answer", "reserve_response", "reservation_pb", "line_results")),
    ("conversion", ("atp_service/edge/convert.py", "reservation/_validate")),
    ("log encode", ("encode_entry", "msgspec", "_encode")),
    ("redis client", ("redis/", "atp_service/storage/")),
    ("domain decision", ("reservation/",)),
    ("actor hop", ("atp_service/engine/shard.py", "atp_service/engine/turn.py", "atp_service/engine/mailbox.py")),
    ("routing", ("atp_service/engine/router.py", "atp_service/engine/routes.py")),
    ("metrics", ("prometheus_client/", "atp_service/instruments.py")),
    ("edge", ("atp_service/edge/",)),
    ("gRPC", ("grpc/",)),
    ("event loop", ("asyncio/", "uvloop/")),
)


def part_of(stack: list[str]) -> str:
    """The part a sampled stack (outermost frame first) counts for."""
    for frame in reversed(stack):
        for part, marks in PARTS:
            if any(mark in frame for mark in marks):
                return part
    return "other"


def breakdown(raw: str) -> dict[str, float]:
    """Share of samples per part, from py-spy's ``--format raw`` (``frame;frame;... count``)."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[part_of(stack.split(";"))] += int(count)
    total = sum(counts.values()) or 1
    return {part: counts[part] / total for part, _ in (*PARTS, ("other", ()))}


def _shares(profile: Path) -> dict[str, float]:
    """``breakdown`` of py-spy's samples in ``profile``; none where py-spy wrote nothing."""
    return breakdown(profile.read_text()) if profile.exists() else {}


async def _pair(servers: dict[str, tuple[str, int]], w: Workload, rate: float, seconds: float,
                slices: int) -> dict[str, Any]:
    """The same open loop against the no-op server and the service, ``seconds`` each, cut into
    ``slices`` that take turns (no-op first, then the service twice, then the no-op twice...): a host
    whose speed drifts during the run (a shared VM's neighbours) slows both alike."""
    found: dict[str, Any] = {"rate": round(rate)}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    for n in range(slices):
        for name in (servers if n % 2 == 0 else reversed(servers)):
            target, pid = servers[name]
            runs[name].append(await measured_open_loop(target, pid, w.picker(7 + n), f"uc-{name}-{round(rate)}-{n}",
                                                       rate, seconds / slices))
    for name, ms in runs.items():
        calls = max(1, sum(m["calls"] for m in ms))  # those the CPU was read around: not the warm-up's
        found[f"{name}_cpu_us"] = round(sum(m["server_cpu_s"] for m in ms) / calls * 1e6)
        # Per call as ``*_cpu_us`` counts it: the thread's figure is then a part of the process's.
        found[f"{name}_loop_thread_us"] = round(sum(m["main_cpu_s"] for m in ms) / calls * 1e6)
        found[f"{name}_loop_sleeps_per_call"] = round(sum(m["main_sleeps"] for m in ms) / calls, 2)
        if name == "service":
            lat = [x for m in ms for x in m["lat"]] or [0.0]
            refused: Counter[str] = Counter()
            for m in ms:
                refused.update(m["refused"])
            found |= {"p50_ms": round(float(np.percentile(lat, 50)), 2),
                      "p99_ms": round(float(np.percentile(lat, 99)), 2), "refused": dict(refused)}
    found["ratio"] = round(found["service_cpu_us"] / max(found["noop_cpu_us"], 1), 2)
    return found


async def _profiled(target: str, pid: int, w: Workload, rate: float, seconds: float, out: Path) -> dict[str, Any]:
    await settle()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    proc = await asyncio.create_subprocess_exec(
        spy, "record", "--nonblocking", "-r", "250", "-f", "raw", "-o", str(out), "-d", str(int(seconds) + 1),
        "-p", str(pid), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    cpu_before: list[float] = []
    *_, calls = await open_loop_unary(target, w.picker(9), f"uc-prof-{round(rate)}", rate, seconds,
                                      lambda: cpu_before.append(cpu_seconds(pid)))  # after the warm-up
    per_call = (cpu_seconds(pid) - cpu_before[0]) / max(calls, 1) * 1e6
    await asyncio.wait_for(proc.wait(), 60)
    shares = _shares(out)
    return {"profile_rate": round(rate), "service_cpu_us": round(per_call),
            "parts_us": {part: round(share * per_call) for part, share in shares.items() if share >= 0.005}}


async def _native(servers: dict[str, tuple[str, int]], w: Workload, rate: float, seconds: float,
                  tmp: Path) -> dict[str, Any]:
    """One more open loop per server at ``rate`` with ``perf record`` on its event loop's thread:
    that thread's CPU per call split by the library it was in (the interpreter, gRPC's Cython
    layer, uvloop, the kernel...). Python frames are not split: that is ``--profile-rate``'s job."""
    perf = shutil.which("perf")
    if perf is None:
        return {"native_profile": "perf is not installed"}
    found: dict[str, Any] = {"native_rate": round(rate)}
    for name, (target, pid) in servers.items():
        await settle()
        data = tmp / f"perf-{name}.data"
        try:
            async with recording(perf, pid, data):
                before: list[float] = []
                *_, calls = await open_loop_unary(target, w.picker(11), f"uc-perf-{name}", rate, seconds,
                                                  partial(_read_thread, pid, before))  # after the warm-up
                per_call = (main_thread(pid)[0] - before[0]) / max(calls, 1) * 1e6
        except PerfFailed as failed:  # not allowed here (perf_event_paranoid, a container) or not for this kernel
            return {"native_profile": str(failed)}
        report = await asyncio.create_subprocess_exec(
            perf, "report", "-i", str(data), "--sort", "dso", "--stdio", "-g", "none",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        text, _ = await report.communicate()
        if report.returncode != 0:
            return {"native_profile": f"perf report failed (exit {report.returncode})"}
        shares = dso_shares(text.decode(errors="replace"))
        if not shares:
            return {"native_profile": f"perf recorded no samples on the {name} server's event loop thread"}
        found[f"{name}_loop_thread_us"] = round(per_call)
        found[f"{name}_by_library_us"] = {dso: round(share * per_call) for dso, share in shares.items()
                                          if share >= 0.01}
    return found


def _read_thread(pid: int, into: list[float]) -> None:
    """Process ``pid``'s event-loop thread's CPU seconds so far, onto ``into``."""
    into.append(main_thread(pid)[0])


def dso_shares(report: str) -> dict[str, float]:
    """Share of samples per library, from ``perf report --sort dso --stdio`` (``  39.57%  name``)."""
    shares: dict[str, float] = {}
    for line in report.splitlines():
        percent, _, dso = line.strip().partition("%")
        if dso and not line.lstrip().startswith("#"):
            try:
                shares[dso.strip()] = float(percent) / 100
            except ValueError:
                continue
    return shares


async def _run(args: argparse.Namespace, tmp: Path) -> None:
    with EmbeddedRedis(tmp / "redis", appendfsync="everysec", unix_socket=args.redis == "unix") as redis_server:
        noop_port, port = held_port(), held_port()
        noop = start([sys.executable, str(ROOT / "benchmarks" / "noop_server.py"), "--port", str(noop_port)],
                     lambda: "ready" in (tmp / "noop.log").read_text(), tmp / "noop.log")
        redis_url = redis_server.local_url  # the unix socket unless --redis tcp (or its path is too long)
        service = start(serve_command(redis_url, port), service_ready(tmp / "service.log"), tmp / "service.log")
        try:
            target = f"127.0.0.1:{port}"
            w = Workload("uniform", [(f"s-{i:06d}", "l-1") for i in range(POSITIONS)], 1_000_000_000)
            await seed_service(target, w)
            ceiling, _ = await grpc_unary(f"127.0.0.1:{noop_port}", w, "uc-ceiling", args.seconds, 64, Tally())
            print(json.dumps({"noop_ceiling": round(ceiling), "redis": redis_url.partition(":")[0]}), flush=True)
            servers = {"noop": (f"127.0.0.1:{noop_port}", noop.pid), "service": (target, service.pid)}
            for text in args.rates.split(","):
                rate = ceiling / 2 if text == "half" else float(text)
                print(json.dumps(await _pair(servers, w, rate, args.seconds, args.slices)), flush=True)
            if args.native_rate:
                print(json.dumps(await _native(servers, w, args.native_rate, args.seconds, tmp)), flush=True)
            if args.profile_rate:
                out = Path(args.profile_out) if args.profile_out else tmp / "profile.txt"
                print(json.dumps(await _profiled(target, service.pid, w, args.profile_rate, args.seconds, out)))
        finally:
            for proc in (noop, service):
                proc.terminate()
                proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rates", default="500,1000,2000,half", help="offered rates; 'half': 50%% of the ceiling")
    parser.add_argument("--seconds", type=float, default=8.0, help="per server and rate")
    parser.add_argument("--slices", type=int, default=4,
                        help="open loops per server and rate, taking turns with the other server's")
    parser.add_argument("--profile-rate", type=float, default=0.0, help="also profile the service at this rate")
    parser.add_argument("--profile-out", default="",
                        help="keep --profile-rate's samples here (py-spy's raw format: a stack and its count a line)")
    parser.add_argument("--redis", choices=("unix", "tcp"), default="unix",
                        help="how the service reaches Redis: its unix socket (as `atp-service serve` reaches the "
                             "Redis it starts itself) or loopback TCP")
    parser.add_argument("--native-rate", type=float, default=0.0,
                        help="also split each server's event-loop thread by library (perf) at this rate")
    add_settle_limit(parser)
    args = parser.parse_args()
    use_settle_limit(args.settle_limit)
    with tempfile.TemporaryDirectory(prefix="atp-unary-cost-") as tmp:
        asyncio.run(_run(args, Path(tmp)))


if __name__ == "__main__":
    main()
