"""A smoke run of benchmarks/scale.py: two leased service processes on the session's Redis Cluster,
one short step of each mode and kind, every position checked after each. No timing assertions:
its figures are in benchmarks/RESULTS.md."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.cluster import RedisCluster

import benchmarks.scale as scale
from atp_client import AtpClient, RoutedClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.benchmarks.test_peak_smoke import ROOT, run

pytestmark = pytest.mark.slow


async def test_scale_runs_two_processes_and_finds_nothing_oversold(cluster_url: str) -> None:
    code, out = await run(sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--cluster-url", cluster_url,
                          "--processes", "2", "--seconds", "1", "--warmup", "0.2", "--skus", "200",
                          "--locations", "2", "--lease-ms", "1000", "--balance-ms", "100", "--in-flight", "16",
                          limit_s=110)
    assert code == 0, out[-3000:]
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {(r["mode"], r["kind"]) for r in rows} == {("routed", "unary"), ("forwarded", "unary"),
                                                     ("routed", "stream"), ("forwarded", "stream")}, rows
    for r in rows:
        assert r["processes"] == 2 and r["load_processes"] == 2, r
        assert r["ops"] > 0 and r["reservations"] > 0 and r["service_cpu_s_per_1000"] > 0, r
        assert r["oversold"] == 0 and r["hold_mismatches"] == 0 and r["checked_positions"] == 400, r
        # What limited the step: each service process's and load generator's cores (no Redis of its own here).
        assert len(r["service_cores"]) == 2 and len(r["load_cores"]) == 2 and r["redis_cores"] == [], r
        assert max(r["service_cores"]) > 0 and r["forwarded_calls"] >= 0 and r["host_cores"] > 0, r
    assert next(r for r in rows if r["mode"] == "forwarded" and r["kind"] == "unary")["forwarded_calls"] > 0, rows


async def test_a_process_stalled_past_its_lease_loses_no_acknowledged_hold_R7(cluster_url: str) -> None:
    """``--stall``: each service process in turn stopped (SIGSTOP) for twice its lease during the window, so
    that the other takes its groups over while it holds acknowledged holds and writes in flight: every position
    still holds at least what was acknowledged held, and no more than that and the calls in doubt."""
    code, out = await run(sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--cluster-url", cluster_url,
                          "--processes", "2", "--seconds", "2", "--warmup", "0.2", "--skus", "200",
                          "--locations", "2", "--lease-ms", "500", "--balance-ms", "100", "--in-flight", "16",
                          "--stall", "1", "--steps", "stream-routed,unary-forwarded", limit_s=110)
    assert code == 0, out[-3000:]
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(r["kind"], r["mode"]) for r in rows] == [("stream", "routed"), ("unary", "forwarded")], rows
    for r in rows:
        assert r["stalls"] >= 1 and r["checked_positions"] == 400, r
        assert r["oversold"] == 0 and r["hold_mismatches"] == 0 and r["holds_lost"] == 0, r


async def test_seeding_waits_out_a_group_no_process_owns_yet(cluster_url: str, tmp_path: Path) -> None:
    """A group being taken over (its owner starved past its lease on a loaded host) refuses its facts
    ``GROUP_MOVED``, owned by no process yet, after the other groups' facts were recorded. Before: scale.py's
    seeding raised it and the step failed before any load; now the same facts are sent again (E8) until the
    group is taken. Here the group's lease is held by a process that is not there, so the refusal is certain,
    and given back once the service has refused the facts once."""
    args = argparse.Namespace(shards=4, log_level="WARNING", lease_ms=1000, balance_ms=100, skus=40, locations=2)
    with RedisCluster.from_url(cluster_url) as redis:
        redis.set(LEASE_OF_GROUP_0, "a-process-gone", px=600_000)
        services = scale.Services(cluster_url, 1, args, tmp_path, "seed")
        try:
            await _routing_answered(services.addresses[0])
            seeding = asyncio.ensure_future(scale.seed(services.addresses[0], args))
            for _ in range(1200):  # a minute at most
                if seeding.done() or _refused_record_events(services.metrics_ports[0]) > 0:
                    break
                await asyncio.sleep(0.05)
            redis.delete(LEASE_OF_GROUP_0)
            await seeding
            async with RoutedClient(services.addresses, timeout_s=30) as client:
                on_hand = [p.on_hand for p in await scale._patiently(client, scale.positions(args))]
        finally:
            services.stop()
    assert on_hand == [scale.STOCK] * (args.skus * args.locations)


LEASE_OF_GROUP_0 = "atp:{g0}:lease"
"""``storage/leases.py GroupLeases.key``, under the service's default key prefix."""


async def _routing_answered(address: str) -> None:
    async with AtpClient(address, timeout_s=5) as client:
        for _ in range(600):
            with contextlib.suppress(grpc.aio.AioRpcError):  # not serving yet
                if sum(1 for g in (await client.stub.GetRouting(pb.GetRoutingRequest())).groups if g.address) == 3:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError("the service did not take the three groups it can take")


def _refused_record_events(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "atp_rpc_duration_seconds_count"
               and sample.labels == {"method": "RecordEvents", "code": "UNAVAILABLE"})
