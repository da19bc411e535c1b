"""The load shape (locust ``LoadTestShape``): users over time, and which users, for each scenario.

One shape for every scenario, because the scenario is an option (``--scenario``, chosen in the
web UI too): each tick reads the run's options (``--duration`` seconds, ``--peak-users``) on the
process that runs the shape (the master, or the only process) and returns the scenario's user
classes with the count. It returns None at the end, which stops the run.
"""

from __future__ import annotations

from collections.abc import Callable

from locust import LoadTestShape

from benchmarks.peak.book import BOOK
from benchmarks.peak.options import Run
from benchmarks.peak.scenarios import users_for

Curve = Callable[[float, float, int], tuple[int, float]]
"""(seconds into the run, its duration, peak users) -> (users, spawn rate per second)."""


def flash_sale(t: float, duration: float, peak: int) -> tuple[int, float]:
    """The drop: nearly everyone arrives within the first 10 % of the run, then stays."""
    return peak, max(1.0, peak / max(1.0, duration * 0.1))


def holiday_peak(t: float, duration: float, peak: int) -> tuple[int, float]:
    """Ramp to the peak over 30 %, hold, a spike of +50 % in the last fifth."""
    ramp = duration * 0.3
    if t < ramp:
        return max(1, int(peak * t / ramp) + 1), peak / ramp + 1
    if t < duration * 0.8:
        return peak, peak
    return int(peak * 1.5), peak


def steady(t: float, duration: float, peak: int) -> tuple[int, float]:
    """An ordinary day: a constant number of users at a fixed per-user rate (regressions)."""
    return peak, peak


CURVES: dict[str, Curve] = {"flash_sale": flash_sale, "holiday_peak": holiday_peak, "steady": steady}


class PeakShape(LoadTestShape):
    def tick(self) -> tuple[int, float, list[type]] | None:
        assert self.runner is not None  # locust sets it before the first tick
        run = Run.of(self.runner.environment.parsed_options)
        if BOOK.seeding:  # users would only queue behind the seed: none until it is in
            return 0, 1.0, users_for(run)
        t = self.get_run_time() - BOOK.setup_s  # the load's own time: seeding is not part of it
        if t >= run.duration_s:
            return None
        users, rate = CURVES[run.scenario](t, run.duration_s, run.peak_users)
        return users, max(rate, 1.0), users_for(run)
