"""The service's own CPU per unary Reserve, without gRPC: how much of a core the service adds on top
of what Python gRPC itself costs (compare.py's no-op server, ``server_cpu``).

The service runs in this process against an embedded Redis (AOF everysec), 10,000 positions seeded
over gRPC; then an open loop calls the servicer's ``Reserve`` directly — validation, the shard
actor, group commit to Redis, the answer — at ``--rate`` for ``--seconds``, and the same loop with
an empty body. The difference of the process's CPU per call is the service's work per call.
``--appends-in-memory`` answers the log's appends without Redis: the service's work without its
Redis I/O.

    python benchmarks/service_cost.py [--rate 1600] [--seconds 5] [--appends-in-memory]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atp_client import duration
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService, EmbeddedRedis, ServiceConfig
from atp_service.storage.log import LogStore
from atp_service.storage.nodes import Call
from benchmarks.compare import Workload, seed_service
from benchmarks.open_loop import latency_s, open_loop

POSITIONS = 10_000


class _Context:
    """What the servicer needs of a gRPC context here: every call must succeed."""

    def time_remaining(self) -> float | None:
        return None  # no deadline

    async def abort(self, code: Any, details: str, trailing_metadata: Any = ()) -> NoReturn:
        raise RuntimeError(f"{code}: {details}")


async def _cpu_per_call(rate: float, seconds: float, body: Any, latencies: list[float] | None = None
                        ) -> tuple[int, float]:
    """(calls, process CPU µs per call) of an open loop running ``body(n)``; each call's seconds
    (``latency_s``: a late start counts) into ``latencies``."""
    calls = 0

    async def one(n: int, due: float) -> None:
        nonlocal calls
        started = time.perf_counter()
        await body(n)
        if latencies is not None:
            latencies.append(latency_s(due, started))  # a late start counts: the service's turns hold this loop
        calls += 1

    before = time.process_time()
    await open_loop(rate, seconds, one, quiet_gc=False)  # the service's collector is this process's
    return calls, (time.process_time() - before) / max(calls, 1) * 1e6


@dataclass
class AppendsInMemory:
    """How many log entries were answered without Redis (``--appends-in-memory``): a path of the log
    that went round the stand-in would show as fewer entries than calls."""

    entries: int = 0


def _answer_appends_in_memory(service: AtpService, answered: AppendsInMemory) -> None:
    """Answer the log's appends without Redis (as if every write landed at once): what is left of
    the service's CPU per call is its own work, the rest of it was its Redis I/O."""
    assert service._log is not None, "started"
    nodes = service._log.nodes
    to_redis, begin_on_redis = nodes.run, nodes.begin

    def landed(calls: list[Call]) -> list[Any]:
        replies = [[b"1"] * (len(call.keys) // 3) for call in calls]  # one reply per entry (3 keys each)
        answered.entries += sum(map(len, replies))
        return replies

    async def run(calls: list[Call], extra_s: float = 0.0) -> list[Any]:
        if not calls or calls[0].script is not LogStore._APPEND:
            return await to_redis(calls, extra_s)
        await asyncio.sleep(0)  # answered in a later turn of the loop, as a reply would be
        return landed(calls)

    def begin(calls: list[Call], done: Callable[[list[Any]], None]) -> bool:
        """The log's group commits sent without a task (``Nodes.begin``, nearly all of them): answered
        from the loop a turn later, as the lane's protocol would."""
        if not calls or calls[0].script is not LogStore._APPEND:
            return begin_on_redis(calls, done)
        asyncio.get_running_loop().call_soon(done, landed(calls))
        return True

    nodes.run = run  # type: ignore[method-assign]
    nodes.begin = begin  # type: ignore[method-assign]
    assert service.engine is not None, "started"
    for actor in service.engine.actors:  # the log in Redis no longer grows: R7's check would stop the shards
        actor.stop_if_log_short = lambda durable, newest: None  # type: ignore[method-assign]


def reserve_request(n: int, positions: int, prefix: str) -> pb.ReserveRequest:
    """The ``n``-th one-line Reserve of a run (id ``<prefix>-<n>``) over ``positions`` seeded positions."""
    return pb.ReserveRequest(reservation_id=f"{prefix}-{n}", ttl=duration(3600), lines=[
        pb.Line(sku=f"s-{n % positions:05d}", location="l-1", quantity=1)])


@asynccontextmanager
async def seeded_service(tmp: Path, config: ServiceConfig, positions: int, workload: str,
                         in_memory: AppendsInMemory | None) -> AsyncIterator[AtpService]:
    """An ``AtpService`` in this process against an embedded Redis, ``positions`` positions seeded
    (by ``workload``'s facts); ``in_memory``: its appends answered without Redis, counted there. Stopped after."""
    with EmbeddedRedis(tmp / "redis", appendfsync="everysec") as redis_server:
        service = AtpService(config, redis_server.url)
        await service.start()
        try:
            await seed_service(f"127.0.0.1:{service.port}",
                               Workload(workload, [(f"s-{i:05d}", "l-1") for i in range(positions)], 1_000_000))
            if in_memory is not None:
                _answer_appends_in_memory(service, in_memory)
            yield service
        finally:
            await service.stop(grace_s=1)


async def measure(rate: float, seconds: float, tmp: Path, in_memory: bool = False) -> dict[str, Any]:
    config = ServiceConfig.from_env(port=0, metrics_port=-1, auth="off", demo=False)
    gc.set_threshold(*config.gc_thresholds)  # as `atp-service serve` does (app/cli.py)
    answered = AppendsInMemory() if in_memory else None
    async with seeded_service(tmp, config, POSITIONS, "u", answered) as service:
        gc.collect()  # the seeded state is long-lived, as `serve` treats its recovered state
        gc.freeze()
        servicer = service._servicer  # what the gRPC server dispatches to
        context: Any = _Context()

        async def empty(n: int) -> None:
            reserve_request(n, POSITIONS, "c")
            await asyncio.sleep(0)

        async def reserve(n: int) -> None:
            await servicer.Reserve(reserve_request(n, POSITIONS, "c"), context)

        _, harness = await _cpu_per_call(rate, seconds, empty)
        commits_before = _commits(service)
        latencies: list[float] = []
        calls, total = await _cpu_per_call(rate, seconds, reserve, latencies)
        commits = _commits(service) - commits_before
    # The difference of the rounded figures, so that the three printed numbers add up.
    return {"rate": rate, "calls": calls, "harness_us_per_call": round(harness),
            "with_service_us_per_call": round(total), "service_us_per_call": round(total) - round(harness),
            "calls_per_group_commit": round(calls / max(commits, 1), 2),
            "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 2),
            "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 2),
            "entries_answered_in_memory": answered.entries if answered else 0}


def _commits(service: AtpService) -> float:
    """Group commits sent so far (each a Redis round trip on one Redis)."""
    return sum(sample.value for metric in service.metrics.storage.pipeline_size.collect()
               for sample in metric.samples if sample.name.endswith("_count"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1600.0, help="calls started per second")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--appends-in-memory", action="store_true",
                        help="answer the log's appends without Redis: the service's CPU without its Redis I/O")
    args = parser.parse_args()
    import uvloop  # the service's default event loop

    uvloop.install()
    with tempfile.TemporaryDirectory(prefix="atp-service-cost-") as tmp:
        print(json.dumps(asyncio.run(measure(args.rate, args.seconds, Path(tmp), args.appends_in_memory))))


if __name__ == "__main__":
    main()
