"""Peak-event simulations against the ATP service over gRPC.

    locust -f benchmarks/locustfile.py --headless --host HOST:PORT --scenario holiday_peak \\
        --duration 60 --peak-users 60 [--tls-ca ca.pem [--client-cert c.pem --client-key c.key]] \\
        [--token-file token] [--csv …] [--html …]

or ``make bench-peak SCENARIO=flash_sale DURATION=60`` (starts a service, writes benchmarks/results/).
Without ``--headless`` the web UI offers the run options (scenario, duration, peak users, run id,
flash stock and TTL, watched channels, stream users and batch) before each run; the connection
options (``--tls-ca``, ``--client-cert``/``--client-key``, ``--tls-server-name``, ``--token`` /
``--token-file``) come from the command line or from ``ATP_*`` variables (``--help`` lists them).
Every option can also be an ``ATP_*`` variable or a line of a locust config file.

Distributed: ``locust -f benchmarks/locustfile.py --master …`` plus ``--worker --master-host …``
processes (or ``--processes N`` on one machine): the master sends its options to the workers with
each run, so only the master needs them, but the files they name are read by every process. At
the end each process checks the business invariants (benchmarks/peak/book.py) and fails the run
on a violation.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
from locust import events
from locust.runners import MasterRunner, WorkerRunner

from benchmarks.peak import grpc_user  # noqa: F401 - first: init_gevent before any gRPC object
from benchmarks.peak.book import BOOK
from benchmarks.peak.connection import check_options, connection_of
from benchmarks.peak.options import Run, add_arguments, settle_run_id
from benchmarks.peak.scenarios import ALL_USERS, ReserveStreamer, seed_for
from benchmarks.peak.shapes import PeakShape  # noqa: F401 - locust runs the shape it finds at module level

# Every user class, on every process: the shape picks the scenario's when a run starts, and a
# worker spawns the classes the master names.
globals().update({user.__name__: user for user in ALL_USERS})


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    add_arguments(parser)


@events.init.add_listener
def _check_options(environment: Any, **_: Any) -> None:
    """Wrong connection options stop locust at once (SystemExit passes locust's event handling)."""
    options = environment.parsed_options
    if options is None:  # locust as a library, without a command line
        return
    try:
        check_options(options)
    except ValueError as exc:
        raise SystemExit(f"locustfile: {exc}") from None
    if options.headless and not options.worker and not environment.host:
        raise SystemExit("locustfile: pass --host HOST:PORT of the ATP service")


@events.test_start.add_listener
def _start(environment: Any, **_: Any) -> None:
    options = environment.parsed_options
    if not isinstance(environment.runner, WorkerRunner):
        settle_run_id(options)  # before the master's spawn messages, which carry it to the workers
        ReserveStreamer.fixed_count = Run.of(options).stream_users  # the dispatcher counts it
    run = Run.of(options)
    BOOK.connection = None  # until this run's is known: no user talks to the last run's service
    BOOK.start(run.run_id, connection_of(options, environment.host))
    started = time.monotonic()
    BOOK.seeding = True
    try:
        # The master (or the only process) seeds while the shape holds at no users; a worker only learns
        # the stock its users draw from and its checks compare with.
        seed_for(run, send=not isinstance(environment.runner, WorkerRunner))
    except grpc.RpcError as exc:  # e.g. UNAUTHENTICATED: a failure of the run, in its report, not a crash
        environment.events.request.fire(request_type="seed", name="seed", response_time=0, response_length=0,
                                        exception=exc, context={})
    finally:
        BOOK.seeding = False
    BOOK.setup_s = time.monotonic() - started


@events.test_stop.add_listener
def _check(environment: Any, **_: Any) -> None:
    if not isinstance(environment.runner, MasterRunner):
        BOOK.check(environment)
        scenario = environment.parsed_options.scenario
        print(f"invariants ({scenario}, run {BOOK.run}): {len(BOOK.stock)} positions, {len(BOOK.acknowledged)} "
              f"acknowledged reservations checked: {'OK' if not BOOK.violations else BOOK.violations[:5]}",
              flush=True)
