"""Smoke runs of the locust scenarios and of the benchmark scripts: they run, fail nothing, check their invariants.

No timing assertions: the figures live in benchmarks/README.md.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from atp_client import timestamp
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.app.service import DEMO_ESTATE
from benchmarks.peak.book import Book
from benchmarks.peak.connection import Connection
from tests.conftest import ServiceFactory

ROOT = Path(__file__).resolve().parent.parent.parent
pytestmark = pytest.mark.slow


async def run(*cmd: str, env: dict[str, str] | None = None, limit_s: float = 90) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, env={**os.environ, **(env or {})},
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), limit_s)
    return proc.returncode or 0, out.decode()


@pytest.mark.parametrize("scenario", ["flash_sale", "holiday_peak", "steady"])
async def test_locust_scenario_runs_without_failures_and_checks_invariants(
        scenario: str, start_service: ServiceFactory, tmp_path: Path) -> None:
    service, _ = await start_service(estate=DEMO_ESTATE)
    prefix = tmp_path / scenario
    code, out = await run(
        sys.executable, "-m", "locust", "-f", "benchmarks/locustfile.py", "--headless",
        "--host", f"127.0.0.1:{service.port}", "--csv", str(prefix), "--only-summary",
        env={"ATP_SCENARIO": scenario, "ATP_DURATION": "4", "ATP_PEAK_USERS": "6", "ATP_RUN_ID": f"t-{scenario}",
             "ATP_STORE_SKUS": "10"})  # 3,000 store positions to seed, not 30,000
    assert code == 0, out[-3000:]
    stats = (await asyncio.to_thread(Path(f"{prefix}_stats.csv").read_text)).splitlines()
    rows = {r["Name"]: r for r in csv.DictReader(stats)}
    assert int(rows["Aggregated"]["Request Count"]) > 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0, out[-3000:]
    assert any(name.startswith("Reserve[") for name in rows), rows.keys()
    assert f"invariants ({scenario}, run t-{scenario}):" in out and "checked: OK" in out, out[-3000:]


class _Events:
    def __init__(self) -> None:
        self.fired: list[dict[str, Any]] = []
        self.request = self

    def fire(self, **kwargs: Any) -> None:
        self.fired.append(kwargs)


class _Environment:
    """The two attributes Book.check uses; locust itself cannot be imported here (it patches with gevent)."""

    def __init__(self) -> None:
        self.events = _Events()
        self.process_exit_code: int | None = None


async def test_invariant_check_reports_a_lost_reservation(start_service: ServiceFactory) -> None:
    service, client = await start_service()
    book = Book(run="t", connection=Connection(f"127.0.0.1:{service.port}"))
    await asyncio.to_thread(book.seed, {("t-sku", "dc-1"): 3})
    held = await client.reserve("kept", [("t-sku", "dc-1", 2)])
    assert held.state == 1
    book.acknowledged.update({"kept": "HELD", "never-made": "HELD"})
    env = _Environment()
    await asyncio.to_thread(book.check, env)
    assert [v.split(":")[0] for v in book.violations] == ["lost"] and "never-made" in book.violations[0]
    assert env.process_exit_code == 1 and env.events.fired[0]["name"] == "invariant:lost"


async def test_invariant_check_finds_units_acknowledged_beyond_what_the_load_generator_sent_R2(
        start_service: ServiceFactory) -> None:
    """The service took 2 units more than the book seeded (a receipt counted that nobody sent) and acknowledged
    holds of them: its own counters agree with each other (reserved 5 <= on_hand 5), the load generator's book,
    which sent 3, does not. The check compared the service's counters only."""
    service, client = await start_service()
    book = Book(run="t", connection=Connection(f"127.0.0.1:{service.port}"))
    await asyncio.to_thread(book.seed, {("t-sku", "dc-1"): 3})
    (extra,) = await client.record_events([pb.Fact(
        event_id="not-sent-by-the-book", source="wms", kind=pb.FACT_KIND_RECEIPT, sku="t-sku", location="dc-1",
        quantity=2, event_time=timestamp(int(time.time() * 1000) - 1000))])  # after the book's COUNT (E1)
    assert extra.outcome == pb.FACT_OUTCOME_APPLIED
    assert (await client.reserve("five", [("t-sku", "dc-1", 5)])).state == pb.RESERVATION_STATE_HELD
    book.held("five", [("t-sku", "dc-1", 5)])
    env = _Environment()
    await asyncio.to_thread(book.check, env)
    assert book.violations == ["oversold: t-sku@dc-1 reservations acknowledged here hold or shipped 5 > 3 units "
                               "ever sent there"], book.violations
    assert env.process_exit_code == 1 and env.events.fired[0]["name"] == "invariant:oversold"
    book.violations.clear()
    book.received[("t-sku", "dc-1")] += 2  # had the book sent the receipt, the units were there
    await asyncio.to_thread(book.check, _Environment())
    assert book.violations == []


async def test_compare_runs_every_system_at_a_tiny_size() -> None:
    code, out = await run(sys.executable, "benchmarks/compare.py", "--seconds", "0.3", "--positions", "200",
                          "--hot-stock", "2", "--in-flight", "8", "--settle-limit", "0.5", limit_s=240)
    assert code == 0, out[-3000:]
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    seen = {(r.get("workload"), r["system"]) for r in rows if "skipped" not in r and not r.get("mode")}
    expected = {"ceiling", "service_unary", "service_stream", "lua_direct", "lua_grpc", "postgres"}
    skipped = {r["system"] for r in rows if "skipped" in r}
    assert skipped <= {"postgres"}, rows  # only PostgreSQL may be absent (not installed), and it says why
    for workload in ("uniform", "hot"):
        assert {s for w, s in seen if w == workload} == expected - skipped
    for r in rows:
        if "skipped" not in r:
            assert r["ops"] > 0
            keeps_stock = r["system"] != "ceiling" and not r.get("mode")
            assert r["oversold"] == (0 if keeps_stock else None)
    half = {r["system"]: r for r in rows if r.get("mode") == "open_loop_half_ceiling"}
    assert set(half) == {"ceiling", "service_unary"}, rows  # the no-op server at the same rate, beside ours
    assert all(r["rate"] > 0 and r["server_cpu"] >= 0 for r in half.values())
    hot = [r for r in rows if r.get("workload") == "hot" and r.get("granted") is not None]
    assert all(r["granted"] <= 20 * 2 for r in hot)  # never more than the hot stock (40 units: sold out or near)


async def test_open_loop_runs_at_a_tiny_size() -> None:
    code, out = await run(sys.executable, "benchmarks/open_loop.py", "--rate", "50", "--seconds", "0.5",
                          "--positions", "100", "--settle-limit", "0.5", limit_s=120)
    assert code == 0, out[-3000:]
    assert "service pid" in out  # printed before the loop, for py-spy
    (result,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert result["ops"] > 0 and result["refused"] == {} and result["server_cpu"] >= 0


async def test_overload_runs_at_a_tiny_size_and_reports_every_outcome() -> None:
    code, out = await run(sys.executable, "benchmarks/overload.py", "--seconds", "0.5", limit_s=180)
    assert code == 0, out[-3000:]
    head, *outcomes = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert head["http2_transport"] == "classic" and head["max_pending_calls"] == 512
    assert sum(o["count"] for o in outcomes) == head["client_calls"] > 0


async def test_idle_cost_reads_both_servers_idle_cpu() -> None:
    code, out = await run(sys.executable, "benchmarks/idle_cost.py", "--seconds", "0.5", "--rounds", "2",
                          "--settle", "0.2", limit_s=120)
    assert code == 0, out[-3000:]
    rounds = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(rounds) == 2
    assert all(r["noop_cpu_ms_per_s"] >= 0 and r["service_cpu_ms_per_s"] > 0 for r in rounds), rounds


@pytest.mark.parametrize("mode", [(), ("--appends-in-memory",)], ids=["redis", "appends-in-memory"])
async def test_service_cost_runs_at_a_tiny_size(mode: tuple[str, ...]) -> None:
    code, out = await run(sys.executable, "benchmarks/service_cost.py", "--rate", "50", "--seconds", "0.3", *mode,
                          limit_s=120)
    assert code == 0, out[-3000:]
    (result,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert result["calls"] > 0 and result["with_service_us_per_call"] > 0
    assert result["service_us_per_call"] == result["with_service_us_per_call"] - result["harness_us_per_call"]
    assert result["calls_per_group_commit"] >= 1 and 0 < result["p50_ms"] <= result["p99_ms"]
    # In memory, every call's entry was answered by the stand-in: none went round it to Redis.
    answered = result["entries_answered_in_memory"]
    assert (answered >= result["calls"]) if mode else answered == 0, result


@pytest.mark.timeout(330)  # two servers, 10,000 positions seeded and perf on a busy machine: past the default 120 s
async def test_unary_cost_runs_at_a_tiny_size_and_reports_both_servers() -> None:
    # A settle waits (30 s at most) for a quiet machine, which a test machine seldom is: one window
    # each here, as the script only has to work.
    code, out = await run(sys.executable, "benchmarks/unary_cost.py", "--rates", "40", "--seconds", "0.5",
                          "--slices", "2", "--native-rate", "40", "--settle-limit", "0.5", limit_s=300)
    assert code == 0, out[-3000:]
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    ceiling, rate, native = lines
    assert ceiling["noop_ceiling"] > 0 and ceiling["redis"] == "unix" and rate["rate"] == 40
    for server in ("noop", "service"):
        assert rate[f"{server}_cpu_us"] > 0 and rate[f"{server}_loop_thread_us"] > 0, rate
        # A part of the whole, over the same windows (each figure rounded to the µs).
        assert rate[f"{server}_loop_thread_us"] <= rate[f"{server}_cpu_us"] + 1, rate
        assert rate[f"{server}_loop_sleeps_per_call"] >= 0
    assert rate["ratio"] == round(rate["service_cpu_us"] / rate["noop_cpu_us"], 2)
    if not shutil.which("perf"):  # the split by library needs perf (not on every machine)
        assert native == {"native_profile": "perf is not installed"}
    elif "native_profile" in native:  # installed, but not allowed here (or none for this kernel)
        # Recording is enabled before the load starts, so a working perf has samples to show.
        # perf itself refused (an exit of its own); never one this code killed for not answering as it knows.
        assert re.fullmatch(r"perf (record|report) failed \(exit [1-9][0-9]*\)", native["native_profile"]), native
    else:
        for server in ("noop", "service"):
            assert native[f"{server}_by_library_us"], native


async def test_write_round_trip_runs_at_a_tiny_size() -> None:
    code, out = await run(sys.executable, "benchmarks/write_round_trip.py", "--calls", "50", "--rounds", "2",
                          limit_s=120)
    assert code == 0, out[-3000:]
    (result,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert result["calls"] == 50
    for path in ("pool", "lane"):
        runs = result[f"{path}_us_per_call"]
        assert len(runs) == 2 and all(us > 0 for us in runs), (path, runs)
        assert result[f"{path}_mean_us"] == round(sum(runs) / 2, 1)


async def test_estate_runs_at_a_tiny_size_and_reports_every_figure() -> None:
    code, out = await run(sys.executable, "benchmarks/estate.py", "--skus", "30", "--locations", "20", "--stocked",
                          "0.5", "--day-facts", "500", "--batch", "200", limit_s=180)
    assert code == 0, out[-3000:]
    (result,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert 200 < result["positions"] < 400  # about half of the 600 positions: the stable hash decides
    assert result["rss_mb_loaded"] >= result["rss_mb_empty"] > 0 and result["snapshot_bytes"] > 0
    for key in ("load_s", "rows_per_s", "facts_per_s", "read_p50_ms", "read_p99_ms", "recovery_s", "kill_recovery_s"):
        assert result[key] > 0, key


async def test_snapshot_stall_runs_at_a_tiny_size() -> None:
    code, out = await run(sys.executable, "benchmarks/snapshot_stall.py", "--skus", "20", "--locations", "10",
                          "--facts", "300", "--rounds", "2", limit_s=120)
    assert code == 0, out[-3000:]
    (result,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert result["positions"] == 200 and len(result["snapshot_ms"]) == len(result["encode_ms"]) == 2


async def test_load_turn_runs_at_a_tiny_size_and_reports_every_scenario() -> None:
    code, out = await run(sys.executable, "benchmarks/load_turn.py", "--positions", "200", "--rows", "400",
                          "--rounds", "1", limit_s=120)
    assert code == 0, out[-3000:]
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["scenario"] for r in results] == ["none_late", "one_late", "late_1pct", "late_10pct", "spread",
                                                "ascending", "repeat", "kept"]
    by = {r["scenario"]: r for r in results}
    assert by["none_late"]["applied"] == 400 and by["one_late"]["quarantined"] == 1
    assert by["late_10pct"]["quarantined"] == 40 and by["repeat"]["absorbed"] == 4
    assert all(sum(r[k] for k in ("applied", "duplicate", "absorbed", "quarantined")) == 400 for r in results)


async def test_snapshot_write_runs_at_a_tiny_size() -> None:
    code, out = await run(sys.executable, "benchmarks/snapshot_write.py", "--mb", "2", "--part-mb", "0,0.25",
                          "--runs", "1", limit_s=120)
    assert code == 0, out[-3000:]
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["part_mb"] for r in results] == [0, 0.25]
    assert all(r["write_s"] > 0 and r["probe_max_ms"] >= r["probe_p50_ms"] > 0 for r in results)


async def test_bytecodes_counts_the_calls_by_file_and_by_function() -> None:
    for by, expected in (("file", "reservation/_reserve_writes.py"),
                         ("function", "reservation/_reserve_writes.py:reserve_new")):
        code, out = await run(sys.executable, "benchmarks/bytecodes.py", "--calls", "20", "--by", by, "--top", "200",
                              limit_s=120)
        assert code == 0, out[-3000:]
        (result,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        # Over 20 calls the timers' share taken off is noise (a snapshot the calls made due runs in
        # the idle window): the net may be anything; what the calls window counted may not be nothing.
        assert result["calls"] == 20 and result["bytecodes_per_call"] + result["timer_bytecodes_per_call"] > 0
        assert result["top"][expected] > 0, result["top"]  # the decision itself ran, once a call
        assert result["timer_bytecodes_per_call"] >= 0
        # Each name's count less what it ran with no call: together no more than everything counted.
        assert sum(result["top"].values()) <= result["bytecodes_per_call"] + result["timer_bytecodes_per_call"] + 1


async def test_bytecodes_through_grpc_counts_the_service_s_handler_beside_the_no_op_s() -> None:
    code, out = await run(sys.executable, "benchmarks/bytecodes_grpc.py", "--calls", "20", "--top", "400",
                          limit_s=120)
    assert code == 0, out[-3000:]
    (result,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert result["calls"] == 20 and result["noop"] > 0, result
    top = result["top"]
    # The method handler runs only through gRPC (bytecodes.py never counts it), once a call: the
    # service's; the no-op's servicer runs on the other side of the difference.
    assert top["atp_service/edge/handlers.py:handle"] > 0, top
    assert top["benchmarks/noop_server.py:_answer"] < 0, top
    assert not any(name.startswith(("grpc/", "google/protobuf/")) for name in top), "the calling side was counted"


@pytest.mark.timeout(330)  # under valgrind the service starts ~50x slower
async def test_instructions_counts_a_few_calls_or_says_valgrind_is_missing() -> None:
    code, out = await run(sys.executable, "benchmarks/instructions.py", "--calls", "20", limit_s=300)
    assert code == 0, out[-3000:]
    (result,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        assert result == {"instructions": "valgrind is not installed"}
    else:  # a Reserve runs some 300,000 instructions; an empty window would count ~0
        # As in bytecodes.py's test: over 20 calls the idle window's share is noise, so the whole
        # count of the calls' window is checked, not the net.
        counted = result["instructions_per_call"] + result["timer_instructions_per_call"]
        assert result["calls"] == 20 and 50_000 < counted < 5_000_000, result
        assert result["timer_instructions_per_call"] >= 0, result


async def test_invariant_check_reads_every_acknowledged_reservation(start_service: ServiceFactory) -> None:
    """The end-of-run line says how many acknowledged reservations were checked: all of them, not the
    first 5,000 (a 10-minute holiday peak acknowledges tens of thousands)."""
    service, _ = await start_service()
    book = Book(run="t", connection=Connection(f"127.0.0.1:{service.port}"))
    book.acknowledged.update({f"never-made-{n}": "HELD" for n in range(5001)})
    await asyncio.to_thread(book.check, _Environment())
    assert len(book.violations) == 5001 and "never-made-5000" in book.violations[-1], book.violations[-1:]
