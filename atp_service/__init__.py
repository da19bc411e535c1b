"""The ATP service: gRPC API, shard actors, Redis-stream durability.

The rooms, top to bottom (``make lint`` keeps imports flowing downwards only):

- ``app``: the executables (``atp-service``, ``atpctl``) and the wiring of one service process;
- ``edge``: the gRPC face — servicer, conversion, auth, admission, drain, watches;
- ``intake`` (facts from POS/WMS: input streams, dead letters, quarantine) and ``channels``
  (estate, curation desk, feeds), side by side;
- ``engine``: routing, the shard actors and their messages, cross-shard coordination, the clock;
- ``storage``: everything that knows Redis — the log, snapshots, channel writes, the embedded server;
- ``config``, ``metrics``, ``tasks``: shared by every room.

``client`` is the Python client, apart from all of them. Importing this package loads nothing but
itself: the names below are imported on first use (a publisher process never loads the server).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app.service import AtpService
    from .client import RETRYABLE, AtpClient, RetryPolicy
    from .config import ServiceConfig
    from .engine import Clock, Engine, ManualClock, SystemClock
    from .pb.atp.v1 import atp_pb2 as api
    from .storage import EmbeddedRedis, free_port

_LAZY = {
    "RETRYABLE": "client", "AtpClient": "client", "RetryPolicy": "client",
    "AtpService": "app.service",
    "Clock": "engine", "ManualClock": "engine", "SystemClock": "engine", "Engine": "engine",
    "ServiceConfig": "config",
    "EmbeddedRedis": "storage", "free_port": "storage",
}


def __getattr__(name: str) -> Any:
    if name == "api":  # the protobuf messages and enums (api.HELD, api.ReserveRequest, ...)
        return importlib.import_module(".pb.atp.v1.atp_pb2", __name__)
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RETRYABLE",
    "AtpClient",
    "AtpService",
    "Clock",
    "EmbeddedRedis",
    "Engine",
    "ManualClock",
    "RetryPolicy",
    "ServiceConfig",
    "SystemClock",
    "api",
    "free_port",
]
