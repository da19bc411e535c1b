"""Client CPU of one write script call, one at a time: redis-py's command path (the pool, a
``wait_for`` task for the write, a timeout per reply) against the write lane (``storage/lane.py``:
a connection of its own, one write, one deadline for the exchange). At 1,000 calls/s most group
commits carry one or two entries, so this is what nearly every call pays.

An embedded Redis (AOF everysec), the loop the service runs on (uvloop); the figure is this
process's CPU time per call, the Redis server's not included.

    python benchmarks/write_round_trip.py [--calls 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from atp_service import EmbeddedRedis
from atp_service.storage.nodes import Call, Nodes, Script, connect

SCRIPT = Script("redis.call('SET', KEYS[1], ARGV[1]) return 1")


async def _cpu_per_call(calls: int, one: Callable[[int], Awaitable[Any]]) -> float:
    """µs of this process's CPU per call of ``one``, awaited one after another."""
    for n in range(200):  # warm up: connections made, script loaded
        await one(n)
    before = time.process_time()
    for n in range(calls):
        await one(n)
    return (time.process_time() - before) / calls * 1e6


async def measure(url: str, calls: int, rounds: int) -> dict[str, Any]:
    pool_client, lane_client = connect(url, 2.0), connect(url, 2.0)
    nodes = Nodes(lane_client)
    await pool_client.script_load(SCRIPT.body)

    async def pooled(n: int) -> Any:  # what Nodes.run did for one call before the lane
        return await pool_client.execute_command(  # type: ignore[no-untyped-call]
            "EVALSHA", SCRIPT.sha, 1, "k", n)

    async def lane(n: int) -> Any:
        return await nodes.run_one(Call(SCRIPT, ["k"], [n]))  # a write that failed raises, as the pool's does

    pool_us: list[float] = []
    lane_us: list[float] = []
    try:
        for _ in range(rounds):  # alternated, so that a slower stretch of the machine hits both
            pool_us.append(round(await _cpu_per_call(calls, pooled), 1))
            lane_us.append(round(await _cpu_per_call(calls, lane), 1))
    finally:
        await pool_client.aclose()
        await nodes.aclose()
    return {"calls": calls, "pool_us_per_call": pool_us, "lane_us_per_call": lane_us,
            "pool_mean_us": round(sum(pool_us) / rounds, 1), "lane_mean_us": round(sum(lane_us) / rounds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000, help="calls per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each path, alternated")
    args = parser.parse_args()
    import uvloop  # the service's default event loop

    uvloop.install()
    with tempfile.TemporaryDirectory(prefix="atp-write-round-trip-") as tmp, \
            EmbeddedRedis(Path(tmp) / "redis", appendfsync="everysec") as server:
        print(json.dumps(asyncio.run(measure(server.url, args.calls, args.rounds))))


if __name__ == "__main__":
    main()
