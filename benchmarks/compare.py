"""This service side by side with what teams use instead, in one run, on this machine.

Same Redis (embedded redis-server, AOF ``appendfsync everysec``) for every Redis-based system,
PostgreSQL with the matching promise (``synchronous_commit=off``: a crash may lose the last
fraction of a second, like ``everysec``), the same asyncio client loop with the same number of
requests in flight (--in-flight, default 64), one-unit reservations of one line:

  ceiling         a no-op gRPC server with the same messages (the Python gRPC ceiling)
  service_unary   this service, one ``Reserve`` per reservation
  service_stream  this service's high-volume path: ``ReserveStream`` batches (200 per message)
  lua_direct      the OMS calling a Redis Lua check-and-decrement script, one call per line
                  (pooled connections, --in-flight calls outstanding)
  lua_grpc        the same script behind a gRPC server of the same shape as ours
  postgres        ``UPDATE stock SET qty = qty - $1 WHERE … AND qty >= $1`` per line (asyncpg pool,
                  prepared statement), when PostgreSQL is installed

Workloads: ``uniform`` — 100,000 positions (10,000 SKUs x 10 locations), 1,000 units each, picked
uniformly; ``hot`` — 20 SKUs at one location, --hot-stock units each (200: 4,000 units, sold out
within the first seconds of a unary system at 1,000 calls/s, so most calls are then refusals, which
are decisions too). ``oversold`` counts, from what each system answered, units granted beyond a
position's stock — only tested where the stock sold out (``sold_out``); any oversold unit is a
``violation:`` line on stderr and the exit status 1. Also open-loop unary runs at half the
measured unary ceiling, for the latency target: the no-op server's, then the service's, each
with the CPU its server process used (``server_cpu``, in cores), each once the machine is quiet
again (``settled_s``: seconds waited for the previous phase's background work to finish).
Prints one JSON object per line, then a table.

    python benchmarks/compare.py [--seconds 5] [--positions 100000] [--systems a,b,...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atp_client import AtpClient, duration, timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import EmbeddedRedis
from benchmarks.open_loop import add_settle_limit, measured_open_loop, use_settle_limit
from benchmarks.peers import CHECK_AND_DECREMENT, Postgres, stock_key
from benchmarks.ports import held_port
from benchmarks.throughput import ROOT, run_for, serve_command, service_ready, start

SYSTEMS = ("ceiling", "service_unary", "service_stream", "lua_direct", "lua_grpc", "postgres")
Position = tuple[str, str]
One = Callable[[int, int], Awaitable[int]]


class Workload:
    def __init__(self, name: str, positions: list[Position], stock: int) -> None:
        self.name, self.positions, self.stock = name, positions, stock

    def picker(self, seed: int) -> Callable[[], Position]:
        rng, positions = random.Random(seed), self.positions
        return lambda: positions[rng.randrange(len(positions))]


def workloads(args: argparse.Namespace) -> list[Workload]:
    locations = 10
    skus = max(1, args.positions // locations)
    uniform = [(f"u-{s:05d}", f"loc-{n:02d}") for s in range(skus) for n in range(locations)]
    hot = [(f"h-{s:02d}", "dc-1") for s in range(20)]
    return [Workload("uniform", uniform, 1000), Workload("hot", hot, args.hot_stock)]


class Tally:
    """Units each position was granted, by what the system answered."""

    def __init__(self) -> None:
        self.granted: Counter[Position] = Counter()

    def oversold(self, stock: int) -> int:
        return sum(max(0, n - stock) for n in self.granted.values())

    def sold_out(self, w: Workload) -> bool:
        """Every position of ``w`` granted its whole stock: only then was the system asked for more than
        it had, and could ``oversold`` have found anything."""
        return all(self.granted[p] >= w.stock for p in w.positions)


def row(workload: str, system: str, ops: float, lat: list[float], oversold: int | None, **extra: Any) -> dict[str, Any]:
    return {"workload": workload, "system": system, "ops": round(ops),
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat else None, "oversold": oversold, **extra}


# -- clients ---------------------------------------------------------------------------------------
async def grpc_unary(target: str, w: Workload, tag: str, seconds: float, in_flight: int,
                     tally: Tally) -> tuple[float, list[float]]:
    pick = w.picker(1)
    async with AtpClient(target) as client:
        async def one(worker: int, n: int) -> int:
            sku, loc = pick()
            resp = await client.reserve(f"{tag}-{worker}-{n}", [(sku, loc, 1)], ttl_seconds=3600)
            if resp.state == pb.RESERVATION_STATE_HELD:
                tally.granted[(sku, loc)] += 1
            return 1

        return await run_for(seconds, in_flight, one)


async def grpc_stream(target: str, w: Workload, tag: str, seconds: float, in_flight: int,
                      tally: Tally, batch: int = 200, streams: int = 4) -> tuple[float, list[float]]:
    """``streams`` bidirectional streams with ``in_flight / streams`` batch messages outstanding on each."""
    pick = w.picker(2)
    latencies: list[float] = []
    done = 0
    stop_at = time.perf_counter() + seconds
    clients = [AtpClient(target) for _ in range(streams)]

    def make(s: int, n: int) -> list[pb.ReserveRequest]:
        return [pb.ReserveRequest(reservation_id=f"{tag}-{s}-{n}-{i}", ttl=duration(3600),
                                  lines=[pb.Line(sku=sku, location=loc, quantity=1)])
                for i, (sku, loc) in enumerate(pick() for _ in range(batch))]

    async def drive(s: int) -> None:
        nonlocal done
        call = clients[s].stub.ReserveStream()
        sent: list[tuple[float, list[pb.ReserveRequest]]] = []
        n = 0
        for _ in range(max(1, in_flight // streams)):
            reqs = make(s, n)
            n += 1
            sent.append((time.perf_counter(), reqs))
            await call.write(pb.ReserveStreamRequest(reservations=reqs))
        while sent:
            result = await call.read()
            at, reqs = sent.pop(0)
            latencies.append((time.perf_counter() - at) * 1000)
            for req, outcome in zip(reqs, result.outcomes, strict=True):
                if outcome.HasField("response") and outcome.response.state == pb.RESERVATION_STATE_HELD:
                    tally.granted[(req.lines[0].sku, req.lines[0].location)] += 1
            done += len(result.outcomes)
            if time.perf_counter() < stop_at:
                reqs = make(s, n)
                n += 1
                sent.append((time.perf_counter(), reqs))
                await call.write(pb.ReserveStreamRequest(reservations=reqs))
        await call.done_writing()

    started = time.perf_counter()
    try:
        await asyncio.gather(*(drive(s) for s in range(streams)))
    finally:
        for c in clients:
            await c.close()
    return done / (time.perf_counter() - started), latencies


async def lua_direct(redis_url: str, w: Workload, seconds: float, in_flight: int,
                     tally: Tally) -> tuple[float, list[float]]:
    client = aioredis.Redis.from_url(redis_url, max_connections=in_flight)
    script = client.register_script(CHECK_AND_DECREMENT)
    pick = w.picker(3)

    async def one(worker: int, n: int) -> int:
        sku, loc = pick()
        if await script(keys=[stock_key(sku, loc)], args=[1]):
            tally.granted[(sku, loc)] += 1
        return 1

    try:
        return await run_for(seconds, in_flight, one)
    finally:
        await client.aclose()


async def postgres(url: str, w: Workload, seconds: float, in_flight: int, tally: Tally) -> tuple[float, list[float]]:
    import asyncpg

    pool = await asyncpg.create_pool(url, min_size=in_flight // 2, max_size=in_flight // 2)
    pick = w.picker(4)
    sql = "UPDATE stock SET qty = qty - $1 WHERE sku = $2 AND loc = $3 AND qty >= $1"

    async def one(worker: int, n: int) -> int:
        sku, loc = pick()
        async with pool.acquire() as conn:
            status = await conn.execute(sql, 1, sku, loc)  # asyncpg prepares and caches it per connection
        if status == "UPDATE 1":
            tally.granted[(sku, loc)] += 1
        return 1

    try:
        return await run_for(seconds, in_flight, one)
    finally:
        await pool.close()


# -- stock --------------------------------------------------------------------------------------------
def renamed(w: Workload, prefix: str) -> Workload:
    """The same shape on fresh positions: every system starts from full stock."""
    return Workload(w.name, [(f"{prefix}{sku}", loc) for sku, loc in w.positions], w.stock)


async def seed_service(target: str, w: Workload) -> None:
    now = int(time.time() * 1000) - 1000
    facts = [pb.Fact(event_id=f"seed-{sku}-{loc}", source="bench", kind=pb.FACT_KIND_COUNT, sku=sku, location=loc,
                     quantity=w.stock, event_time=timestamp(now)) for sku, loc in w.positions]
    async with AtpClient(target, timeout_s=60) as client:
        for i in range(0, len(facts), 5000):
            for attempt in range(20):  # a client's manners: back off when the service sheds load
                try:
                    await client.record_events(facts[i:i + 5000])
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or attempt == 19:
                        raise
                    await asyncio.sleep(0.05 * (attempt + 1))


async def seed_redis(redis_url: str, w: Workload) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        for i in range(0, len(w.positions), 10_000):
            await client.mset({stock_key(s, loc): w.stock for s, loc in w.positions[i:i + 10_000]})
    finally:
        await client.aclose()


async def seed_postgres(url: str, w: Workload) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DROP TABLE IF EXISTS stock; "
                           "CREATE TABLE stock (sku text, loc text, qty int NOT NULL, PRIMARY KEY (sku, loc))")
        await conn.copy_records_to_table("stock", records=[(s, loc, w.stock) for s, loc in w.positions])
        await conn.execute("VACUUM ANALYZE stock")
    finally:
        await conn.close()


# -- the run --------------------------------------------------------------------------------------------
async def measure(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    wanted = set(args.systems)
    out: list[dict[str, Any]] = []
    ports = {name: held_port() for name in ("noop", "service", "lua", "pg")}
    procs = []
    pg = Postgres(tmp / "pg" / "data", ports["pg"])
    pg_url = None
    with EmbeddedRedis(tmp / "redis", appendfsync="everysec") as redis_server:
        url = redis_server.url
        try:
            procs.append(start([sys.executable, str(ROOT / "benchmarks" / "noop_server.py"), "--port",
                                str(ports["noop"])], lambda: "ready" in (tmp / "noop.log").read_text(),
                               tmp / "noop.log"))
            procs.append(start(serve_command(url, ports["service"]), service_ready(tmp / "service.log"),
                               tmp / "service.log"))
            procs.append(start([sys.executable, str(ROOT / "benchmarks" / "peers.py"), "lua-grpc", "--port",
                                str(ports["lua"]), "--redis-url", url],
                               lambda: "ready" in (tmp / "lua.log").read_text(), tmp / "lua.log"))
            if "postgres" in wanted:
                why = pg.unavailable()
                if why is None:
                    pg_url = pg.start(synchronous_commit="off")
                else:
                    out.append({"system": "postgres", "skipped": why})
            service = f"127.0.0.1:{ports['service']}"
            async with AtpClient(service) as client:
                await client.wait_ready(timeout_s=120)
            pids = {"noop": procs[0].pid, "service": procs[1].pid}
            for base in workloads(args):
                out += await measure_workload(args, base, url, ports, pids, pg_url, wanted)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
            pg.stop()
    return out


async def measure_workload(args: argparse.Namespace, base: Workload, url: str, ports: dict[str, int],
                           pids: dict[str, int], pg_url: str | None, wanted: set[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    s, n = args.seconds, args.in_flight
    noop, service, lua = (f"127.0.0.1:{ports[k]}" for k in ("noop", "service", "lua"))
    for system in SYSTEMS:
        if system not in wanted or (system == "postgres" and pg_url is None):
            continue
        w, tally = renamed(base, f"{system[:3]}{system[-1]}-"), Tally()
        if system == "ceiling":
            ops, lat = await grpc_unary(noop, w, "c", s, n, tally)
            out.append(row(w.name, system, ops, lat, None, note="keeps no stock"))
            continue
        if system.startswith("service"):
            await seed_service(service, w)
            tag = f"{w.name}-{system}"
            run = grpc_unary(service, w, tag, s, n, tally) if system == "service_unary" else \
                grpc_stream(service, w, tag, s, n, tally)
        elif system.startswith("lua"):
            await seed_redis(url, w)
            run = lua_direct(url, w, s, n, tally) if system == "lua_direct" else \
                grpc_unary(lua, w, f"{w.name}-{system}", s, n, tally)
        else:
            assert pg_url is not None
            await seed_postgres(pg_url, w)
            run = postgres(pg_url, w, s, n, tally)
        ops, lat = await run
        out.append(row(w.name, system, ops, lat, tally.oversold(w.stock), granted=sum(tally.granted.values()),
                       sold_out=tally.sold_out(w)))
    ceiling = next((r["ops"] for r in out if r["system"] == "ceiling"), None)
    if base.name == "uniform" and ceiling and "service_unary" in wanted:
        w = renamed(base, "half-")
        await seed_service(service, w)
        # The no-op server at the same offered rate first: what Python gRPC alone does at that load.
        for system, target, pid in (("ceiling", noop, pids["noop"]), ("service_unary", service, pids["service"])):
            m = await measured_open_loop(target, pid, w.picker(5), f"ol-{system}", ceiling / 2, s)
            out.append(row(w.name, system, m["ops"], m["lat"], None, mode="open_loop_half_ceiling",
                           rate=round(ceiling / 2), refused=m["refused"], server_cpu=m["server_cpu"],
                           settled_s=m["settled_s"]))
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'workload':9} {'system':15} {'ops/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'oversold':>8}"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{'':9} {r['system']:15} skipped: {r['skipped']}")
            continue
        name = r["system"] + (" @½ceiling" if r.get("mode") else "")
        cpu = f"   server CPU {r['server_cpu']:.0%} of a core" if "server_cpu" in r else ""
        lines.append(f"{r['workload']:9} {name:15} {r['ops']:>8} {r['p50_ms']!s:>8} {r['p99_ms']!s:>8} "
                     f"{r['oversold']!s:>8}{cpu}")
    for workload in ("uniform", "hot"):
        by = {r["system"]: r["ops"] for r in rows if r.get("workload") == workload and not r.get("mode")}
        for ours in ("service_stream", "service_unary"):
            if ours not in by:
                continue
            ratios = [f"{peer} {by[ours] / by[peer]:.2f}x" for peer in ("lua_direct", "lua_grpc", "postgres")
                      if by.get(peer)]
            if ratios:
                lines.append(f"{workload}: {ours} vs " + ", ".join(ratios))
    return "\n".join(lines)


def violations(rows: list[dict[str, Any]]) -> list[str]:
    """A row's units granted beyond its stock, each (R2: the run fails on any)."""
    return [f"{r['system']} granted {r['oversold']} units beyond the {r['workload']} stock (R2)"
            for r in rows if r.get("oversold")]


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per system and workload")
    parser.add_argument("--positions", type=int, default=100_000, help="positions of the uniform workload")
    parser.add_argument("--hot-stock", type=int, default=200, help="units per hot SKU (sold out within the run, or "
                        "its oversold is not tested: sold_out)")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--systems", type=lambda v: v.split(","), default=list(SYSTEMS))
    add_settle_limit(parser)
    return parser.parse_args(argv)


def main() -> None:
    args = arguments()
    use_settle_limit(args.settle_limit)
    with tempfile.TemporaryDirectory(prefix="atp-compare-") as tmp:
        rows = asyncio.run(measure(args, Path(tmp)))
    for r in rows:
        print(json.dumps(r), flush=True)
    print(table(rows))
    found = violations(rows)
    for violation in found:
        print(f"violation: {violation}", file=sys.stderr)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
