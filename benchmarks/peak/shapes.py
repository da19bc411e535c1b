"""Load shapes (locust ``LoadTestShape``): users over time for each scenario.

``ATP_DURATION`` (seconds, default 60) and ``ATP_PEAK_USERS`` (default 60) scale them; a shape
returns None at the end, which stops the run.
"""

from __future__ import annotations

import os

from locust import LoadTestShape

DURATION_S = float(os.environ.get("ATP_DURATION", "60"))
PEAK_USERS = int(os.environ.get("ATP_PEAK_USERS", "60"))


class FlashSaleShape(LoadTestShape):
    """The drop: nearly everyone arrives within the first 10 % of the run, then stays."""

    def tick(self) -> tuple[int, float] | None:
        t = self.get_run_time()
        if t >= DURATION_S:
            return None
        return PEAK_USERS, max(1.0, PEAK_USERS / max(1.0, DURATION_S * 0.1))


class HolidayPeakShape(LoadTestShape):
    """Ramp to the peak over 30 %, hold, a spike of +50 % in the last fifth, then stop."""

    def tick(self) -> tuple[int, float] | None:
        t = self.get_run_time()
        if t >= DURATION_S:
            return None
        ramp = DURATION_S * 0.3
        if t < ramp:
            return max(1, int(PEAK_USERS * t / ramp) + 1), PEAK_USERS / ramp + 1
        if t < DURATION_S * 0.8:
            return PEAK_USERS, PEAK_USERS
        return int(PEAK_USERS * 1.5), PEAK_USERS


class SteadyShape(LoadTestShape):
    """An ordinary day: a constant number of users at a fixed per-user rate (regressions)."""

    def tick(self) -> tuple[int, float] | None:
        if self.get_run_time() >= DURATION_S:
            return None
        return PEAK_USERS, PEAK_USERS
