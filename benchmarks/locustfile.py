"""Peak-event simulations against the ATP service over gRPC.

    ATP_SCENARIO=flash_sale|holiday_peak|steady locust -f benchmarks/locustfile.py --headless \\
        --host 127.0.0.1:50051 [--csv …] [--html …]

or ``make bench-peak SCENARIO=flash_sale DURATION=60`` (starts a service, writes benchmarks/results/).
Environment: ATP_DURATION, ATP_PEAK_USERS (the load shape), ATP_RUN_ID (SKU prefix: one per run),
ATP_FLASH_STOCK, ATP_FLASH_TTL_S, ATP_WATCH_CHANNELS. At the end each process checks the business
invariants (benchmarks/peak/book.py) and fails the run on a violation.
Distributed: ``locust -f benchmarks/locustfile.py --master …`` plus ``--worker --master-host …``
processes (or ``--processes N`` on one machine), each with the same ATP_* environment.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from locust import events
from locust.runners import MasterRunner

from benchmarks.peak import grpc_user  # noqa: F401 - first: init_gevent before any gRPC object
from benchmarks.peak.book import BOOK
from benchmarks.peak.scenarios import seed_for, users_for
from benchmarks.peak.shapes import FlashSaleShape, HolidayPeakShape, SteadyShape

SCENARIO = os.environ.get("ATP_SCENARIO", "steady")
if SCENARIO not in ("flash_sale", "holiday_peak", "steady"):
    raise SystemExit(f"ATP_SCENARIO: must be flash_sale, holiday_peak or steady, got {SCENARIO!r}")

# locust runs the User classes and the shape it finds at module level: only this scenario's.
globals().update({user.__name__: user for user in users_for(SCENARIO)})
Shape = {"flash_sale": FlashSaleShape, "holiday_peak": HolidayPeakShape, "steady": SteadyShape}[SCENARIO]


@events.test_start.add_listener
def _seed(environment: Any, **_: Any) -> None:
    if not isinstance(environment.runner, MasterRunner):
        seed_for(SCENARIO, environment.host)


@events.test_stop.add_listener
def _check(environment: Any, **_: Any) -> None:
    if not isinstance(environment.runner, MasterRunner):
        BOOK.check(environment.host, environment)
        print(f"invariants ({SCENARIO}): {len(BOOK.stock)} positions, {len(BOOK.acknowledged)} acknowledged "
              f"reservations checked: {'OK' if not BOOK.violations else BOOK.violations[:5]}", flush=True)
