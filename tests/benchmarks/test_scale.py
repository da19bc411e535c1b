"""A smoke run of benchmarks/scale.py: two leased service processes on the session's Redis Cluster,
one short step of each mode and kind, every position checked after each. No timing assertions:
its figures are in benchmarks/RESULTS.md."""

from __future__ import annotations

import json
import sys

import pytest

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
