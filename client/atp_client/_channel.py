"""The channel options every client channel carries: keepalive pings, and a bounded wait between connection attempts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

KEEPALIVE_S = 20.0
"""Pings on a channel with a call open, by default (``AtpClient(keepalive_s=…)``): a service that stops
answering (its process paused, a network dropping its packets, the TCP connection left open) ends the calls
open on it ``Retryable`` (UNAVAILABLE) within this and ``KEEPALIVE_TIMEOUT_S``. Without them a watch
(WatchAvailability: the service may send nothing for hours) waited for ever, told nothing. The service
takes pings 5 s apart at the closest (its ``MIN_PING_INTERVAL_MS``): closer, it ends the connection."""
KEEPALIVE_TIMEOUT_S = 10.0
"""How long a ping waits for its answer before the connection, and every call open on it, is given up."""
MAX_KEEPALIVE_S = 2_000_000.0
"""The longest ``keepalive_s``/``keepalive_timeout_s`` taken (~23 days): gRPC's ms in a C int (2**31 - 1) hold it."""


def keepalive_options(keepalive_s: float, timeout_s: float) -> list[tuple[str, Any]]:
    """gRPC's channel options pinging every ``keepalive_s`` while a call is open (none while idle)."""
    return [("grpc.keepalive_time_ms", round(keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", round(timeout_s * 1000)),
            ("grpc.http2.ping_timeout_ms", round(timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 0),
            # gRPC's default (2) stops pinging once two pings went with no data sent: a watch sends none
            # after its request, and a service silent from then on was never found out.
            ("grpc.http2.max_pings_without_data", 0)]


RECONNECT_MAX_S = 1.0
"""The longest wait between attempts to connect, by default (``AtpClient(reconnect_max_s=…)``): a service back at
its address (restarted after a kill, a rolling restart, a failover) is reached within this of its listening (gRPC
jitters each wait by up to 20 %). gRPC's own wait grows x1.6 up to 120 s while the service stays down: a client on
it may have its calls refused ``UNAVAILABLE`` (``wait_ready`` waiting) for up to that long after the service is
serving again. An attempt a second to a process that is down costs it nothing; shorter, thousands of clients would
crowd a process starting."""
MIN_RECONNECT_MAX_S = 0.01
MAX_RECONNECT_MAX_S = 3600.0
FIRST_RECONNECT_MS = 1000
"""gRPC's own first wait, kept where the bound is longer."""
INITIAL_KEY = "grpc.initial_reconnect_backoff_ms"
MAX_KEY = "grpc.max_reconnect_backoff_ms"


def checked_reconnect(reconnect_max_s: float) -> float:
    """``reconnect_max_s`` if it is a finite number of seconds in range, else ``ValueError`` naming it."""
    number = isinstance(reconnect_max_s, int | float) and not isinstance(reconnect_max_s, bool)
    if not (number and math.isfinite(reconnect_max_s)
            and MIN_RECONNECT_MAX_S <= reconnect_max_s <= MAX_RECONNECT_MAX_S):
        raise ValueError(f"reconnect_max_s: must be a number of seconds within [{MIN_RECONNECT_MAX_S:g}, "
                         f"{MAX_RECONNECT_MAX_S:g}], got {reconnect_max_s!r}")
    return float(reconnect_max_s)


def reconnect_options(reconnect_max_s: float = RECONNECT_MAX_S,
                      given: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """gRPC's channel options waiting at most ``reconnect_max_s`` between attempts to connect, for any channel to
    the service; the options in ``given`` (a caller's own) are left out, each winning over ours. gRPC takes its
    first wait as given, even past the maximum: it is the shortest of its own (1 s), the bound and a maximum in
    ``given``. ``grpc.min_reconnect_backoff_ms`` is left alone: it is how long one attempt may take to connect
    (20 s), and a short one gives up the handshake of a process busy starting."""
    bound_ms = round(checked_reconnect(reconnect_max_s) * 1000)
    theirs = dict(given)
    caps = [theirs[MAX_KEY]] if isinstance(theirs.get(MAX_KEY), int) else []
    ours = [(INITIAL_KEY, min(FIRST_RECONNECT_MS, bound_ms, *caps)), (MAX_KEY, bound_ms)]
    return [option for option in ours if option[0] not in theirs]
