"""Which HTTP/2 server transport gRPC core runs — and so what a call refused at the door is told.

Under overload the queue that grows is gRPC core's, ahead of any Python code (see
``ServiceConfig.max_pending_calls``); only gRPC core can refuse calls there fast enough. What it
answers depends on its server transport:

- ``classic`` (chttp2, gRPC's default): the call's stream is reset, the client sees ``CANCELLED``.
- ``promise`` (gRPC's promise-based HTTP/2 server, the ``ph2_server`` experiment of grpcio 1.85):
  the call is answered ``RESOURCE_EXHAUSTED`` "Too many pending requests for this server".

gRPC reads its experiments once, from ``GRPC_EXPERIMENTS``, when ``grpc`` is first imported: a
running process cannot switch. ``atp-service serve`` therefore re-executes itself with the
variable set when the configured transport is not the one in effect; a program embedding
``AtpService`` sets the variable itself before importing ``grpc`` (``experiments_for`` says to what).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

from atp_service.config import TRANSPORTS

log = logging.getLogger(__name__)

ENV = "GRPC_EXPERIMENTS"
EXPERIMENT = "ph2_server"


def _names(value: str | None) -> list[str]:
    return [name.strip() for name in (value or "").split(",") if name.strip()]


def active(env: Mapping[str, str]) -> str:
    """The transport gRPC core runs in a process started with ``env``."""
    return "promise" if EXPERIMENT in _names(env.get(ENV)) else "classic"


def experiments_for(transport: str, current: str | None) -> str:
    """``GRPC_EXPERIMENTS`` for ``transport``, keeping any other experiment an operator set."""
    if transport not in TRANSPORTS:
        raise ValueError(f"http2_transport: must be one of {TRANSPORTS}, got {transport!r}")
    names = [name for name in _names(current) if name.lstrip("-") != EXPERIMENT]
    if transport == "promise":
        names.append(EXPERIMENT)
    return ",".join(names)


def refusal_status(transport: str) -> str:
    return "RESOURCE_EXHAUSTED" if transport == "promise" else "CANCELLED"


def note(running: str, max_pending_calls: int, stream_window_bytes: int) -> None:
    """Says at the start what ``running`` answers a call refused at the door, and whether it holds to the window."""
    log.info("gRPC HTTP/2 transport %s: calls past max_pending_calls (%d) are answered %s", running,
             max_pending_calls, refusal_status(running))
    if running == "promise":
        # grpcio 1.85's ph2_server takes a call's request bytes whatever the service has read: a ReserveStream's
        # caller writing ahead of a service deciding nothing had 100 MB taken on one stream, unread, in memory.
        log.warning("gRPC HTTP/2 transport promise: stream_window_bytes (%d) is not enforced, a call's request is "
                    "taken whole however little the service has read (a ReserveStream's batches written ahead of "
                    "those decided are held in memory without bound); run classic where callers are not trusted "
                    "to write only what they have answers for", stream_window_bytes)


def reexec_for(transport: str) -> None:
    """Replace this process (same pid, same arguments) by one that runs ``transport``; returns when
    that is already the case. Call it before any gRPC server or channel exists."""
    if active(os.environ) == transport:
        return
    env = dict(os.environ)
    env[ENV] = experiments_for(transport, env.get(ENV))
    assert active(env) == transport  # so the new process returns above: no loop
    log.info("re-executing with %s=%s (gRPC's %s HTTP/2 server transport)", ENV, env[ENV], transport)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
