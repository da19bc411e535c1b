"""unary_cost.py's CPU per call is the CPU of the measured open loop over the calls it made: not the
channel's connecting and the warm-up calls before it, nor a count of calls assumed from the rate.

The servers' CPU clocks are stood in for by a count of calls (each pick "costs" 1 ms), so that the
figure is exact: 1,000 µs per call whatever the machine's speed."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import benchmarks.open_loop as open_loop_module
from benchmarks.compare import Workload
from benchmarks.unary_cost import _pair
from tests.benchmarks.test_open_loop_timing import _noop_server

COST_S = 0.001


class _Costly(Workload):
    """Every pick (each call's, the warm-up's too) adds ``COST_S`` to the stand-in CPU clock."""

    def __init__(self) -> None:
        super().__init__("w", [("s-1", "l-1")], 1)
        self.cpu_s = 0.0

    def picker(self, seed: int) -> Callable[[], tuple[str, str]]:
        def pick() -> tuple[str, str]:
            self.cpu_s += COST_S
            return "s-1", "l-1"
        return pick


async def test_cpu_per_call_counts_the_measured_calls_only(monkeypatch: pytest.MonkeyPatch) -> None:
    w = _Costly()
    monkeypatch.setattr(open_loop_module, "cpu_seconds", lambda pid: w.cpu_s)
    monkeypatch.setattr(open_loop_module, "main_thread", lambda pid: (w.cpu_s, 0))
    monkeypatch.setattr(open_loop_module, "SETTLE_LIMIT_S", 0.0)  # no wait for a quiet machine
    server, target = await _noop_server()
    try:
        found = await _pair({"noop": (target, 0), "service": (target, 0)}, w, 100.0, 0.4, 2)
    finally:
        await server.stop(None)
    # Before: the 50 warm-up calls' CPU was in, divided by the rate times a window that held them and connecting.
    assert (found["noop_cpu_us"], found["service_cpu_us"]) == (1000, 1000), found
    assert (found["noop_loop_thread_us"], found["service_loop_thread_us"]) == (1000, 1000), found
    assert found["ratio"] == 1.0
