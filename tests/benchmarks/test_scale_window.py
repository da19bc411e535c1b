"""scale.py's service CPU per 1,000 reservations takes the CPU over the window its reservations were
counted in: until every load generator has its answers in (the requests in flight when the window's
seconds run out are answered after them, and counted), not the seconds alone.

The load generators here stand in for ``scale_load.run_load`` (spawned processes, as scale.py runs
them): each answers reservations, some after the window's seconds, and the stand-in "service CPU"
is 1 ms per reservation answered, so that the figure is exact."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import pytest

import benchmarks.scale as scale
from benchmarks.scale_load import LoadSpec, Tally

CPU_FILE = "SCALE_WINDOW_TEST_CPU_FILE"  # the stand-in generator's, not an ATP_ setting
SECONDS = 0.3
IN_WINDOW, AFTER = 10, 30
"""Reservations answered in the window's seconds, and after them (a stream's messages in flight)."""


def _reads(cpu: Path) -> int:
    """How often scale.py has read the stand-in service CPU so far."""
    reads = cpu.with_suffix(".reads")
    return len(reads.read_text()) if reads.exists() else 0


def _until(condition: Any, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def answering_generator(spec: LoadSpec, barrier: Any, results: Any) -> None:
    """In a spawned process: answers reservations, booking 1 ms of service CPU for each in a file —
    some once scale.py has opened its window, the rest once it has read it again (or after a while,
    where it waits for the answers first)."""
    cpu = Path(os.environ[CPU_FILE])
    barrier.wait()
    _until(lambda: _reads(cpu) >= 1, 30)
    cpu.write_text(str(IN_WINDOW))
    _until(lambda: _reads(cpu) >= 2, spec.seconds + 1)  # the backlog of the window's last requests
    cpu.write_text(str(IN_WINDOW + AFTER))
    results.put(Tally(calls=IN_WINDOW + AFTER, window_s=spec.seconds + 1))


class _Services:
    def __init__(self, cpu: Path) -> None:
        self.cpu, self.procs, self.addresses = cpu, [], ("127.0.0.1:1",)

    def cpu_s(self) -> float:
        with self.cpu.with_suffix(".reads").open("a") as reads:
            reads.write("r")
        return int(self.cpu.read_text()) / 1000 if self.cpu.exists() else 0.0

    def forwarded(self) -> int:
        return 0


async def test_service_cpu_per_reservation_covers_the_answers_after_the_seconds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = tmp_path / "cpu"
    monkeypatch.setenv(CPU_FILE, str(cpu))
    monkeypatch.setattr(scale, "run_load", answering_generator)
    args = argparse.Namespace(skus=1, locations=1, seconds=SECONDS, in_flight=1, batch=1, warmup=0.0, redis_pids=[],
                              stall=0.0)
    tallies, cpu_s, _ = await scale.load(_Services(cpu), "stream", "routed", args, 1)  # type: ignore[arg-type]
    row = scale.row(1, "stream", "routed", tallies, cpu_s, 1)
    assert row["reservations"] == IN_WINDOW + AFTER
    # Before: the CPU was read when the seconds ran out, the reservations answered later counted without it.
    assert row["service_cpu_s_per_1000"] == 1.0, row
