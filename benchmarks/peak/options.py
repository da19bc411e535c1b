"""The peak simulation's own command-line options, added to locust's (``events.init_command_line_parser``).

Locust sends a master's options to its workers with every spawn message, and the web UI shows the
run options and writes what is typed there back into them before a run starts. So every process
reads a run's parameters from ``environment.parsed_options`` when the run starts, never from the
environment at import. The connection options (certificates, token) stay out of the web UI: they
describe the deployment, not the run, and one of them is a secret.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

SCENARIOS = ("flash_sale", "holiday_peak", "steady")
RUN_ID_KEY = "atp_peak_run_id"
"""Not an option: the run id the master (or the only process) settled on at the start, which the
spawn messages carry to every worker, so that every process of a run uses the same SKUs."""


def add_arguments(parser: Any) -> None:
    """The run's parameters (shown in the web UI) and the connection's (command line and environment only)."""
    run = {"include_in_web_ui": True}
    parser.add_argument("--scenario", choices=SCENARIOS, default="steady", env_var="ATP_SCENARIO", **run,
                        help="which peak to simulate (its users and load shape)")
    parser.add_argument("--duration", type=float, default=60.0, env_var="ATP_DURATION", **run,
                        help="seconds the load shape runs; the run stops then")
    parser.add_argument("--peak-users", type=int, default=60, env_var="ATP_PEAK_USERS", **run,
                        help="users at the shape's peak")
    parser.add_argument("--run-id", default="", env_var="ATP_RUN_ID", **run,
                        help="prefix of this run's SKUs and reservation ids (empty: a fresh one per run)")
    parser.add_argument("--flash-stock", type=int, default=20, env_var="ATP_FLASH_STOCK", **run,
                        help="flash_sale: units of each hot SKU")
    parser.add_argument("--flash-ttl-s", type=int, default=20, env_var="ATP_FLASH_TTL_S", **run,
                        help="flash_sale: hold time of an unpaid reservation")
    parser.add_argument("--store-skus", type=int, default=100, env_var="ATP_STORE_SKUS", **run,
                        help="holiday_peak, steady: SKUs stocked at each of the 300 stores (seeded before the load)")
    parser.add_argument("--watch-channels", default="web,store-pickup", env_var="ATP_WATCH_CHANNELS", **run,
                        help="holiday_peak: channels the watchers subscribe to (comma-separated)")
    parser.add_argument("--stream-users", type=int, default=1, env_var="ATP_STREAM_USERS", **run,
                        help="users each holding one ReserveStream open (0: none)")
    parser.add_argument("--stream-batch", type=int, default=20, env_var="ATP_STREAM_BATCH", **run,
                        help="reservations per ReserveStream message")
    _connection_arguments(parser)


def _connection_arguments(parser: Any) -> None:
    # locust has --tls-cert/--tls-key of its own (for the web UI): these are the gRPC client's
    hidden = {"include_in_web_ui": False}
    parser.add_argument("--tls-ca", env_var="ATP_TLS_CA", **hidden,
                        help="CA certificate (PEM) that signs the service's: connect with TLS")
    parser.add_argument("--client-cert", env_var="ATP_CLIENT_CERT", **hidden,
                        help="client certificate (PEM) for mutual TLS (with --client-key and --tls-ca)")
    parser.add_argument("--client-key", env_var="ATP_CLIENT_KEY", **hidden, help="client key (PEM) for mutual TLS")
    parser.add_argument("--tls-server-name", env_var="ATP_TLS_SERVER_NAME", **hidden,
                        help="name to verify the service's certificate against, when --host is an address "
                             "the certificate does not name")
    parser.add_argument("--token", env_var="ATP_TOKEN", **hidden,
                        help="bearer token sent on every call (roles oms, ingest and channel); prefer "
                             "the environment or --token-file: a command line is visible to every user")
    parser.add_argument("--token-file", env_var="ATP_TOKEN_FILE", **hidden,
                        help="file holding the bearer token (read by every locust process)")


@dataclass(frozen=True, slots=True)
class Run:
    """One run's parameters, as every process of the run sees them."""

    scenario: str
    duration_s: float
    peak_users: int
    run_id: str
    flash_stock: int
    flash_ttl_s: int
    store_skus: int
    watch_channels: tuple[str, ...]
    stream_users: int
    stream_batch: int

    @classmethod
    def of(cls, options: Any) -> Run:
        if options.scenario not in SCENARIOS:  # the web UI's form is not checked by argparse
            raise ValueError(f"--scenario: must be one of {', '.join(SCENARIOS)}, got {options.scenario!r}")
        channels = tuple(c.strip() for c in str(options.watch_channels).split(",") if c.strip())
        return cls(scenario=options.scenario, duration_s=float(options.duration), peak_users=int(options.peak_users),
                   run_id=str(getattr(options, RUN_ID_KEY, "") or options.run_id or "local"),
                   flash_stock=int(options.flash_stock), flash_ttl_s=int(options.flash_ttl_s),
                   store_skus=max(1, int(options.store_skus)),
                   watch_channels=channels or ("web",), stream_users=max(0, int(options.stream_users)),
                   stream_batch=max(1, int(options.stream_batch)))


def settle_run_id(options: Any) -> str:
    """At the start of a run, on the master or the only process: the given run id, else a fresh one.
    Kept apart from ``--run-id`` so that a web UI's next run, with the field left empty, gets its own."""
    run_id = str(options.run_id or "") or time.strftime("%Y%m%d-%H%M%S")
    setattr(options, RUN_ID_KEY, run_id)
    return run_id
