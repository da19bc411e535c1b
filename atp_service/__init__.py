"""The ATP service: gRPC API, shard actors, Redis-stream durability.

The rooms, top to bottom (``make lint`` keeps imports flowing downwards only):

- ``app``: the executable (``atp-service``) and the wiring of one service process;
- ``edge``: the gRPC face — servicer, conversion, auth, admission, drain, watches;
- ``intake`` (facts from POS/WMS: input streams, dead letters, quarantine) and ``channels``
  (estate, curation desk, feeds), side by side;
- ``engine``: routing, the shard actors and their messages, cross-shard coordination, the clock;
- ``storage``: everything that knows Redis — the log, snapshots, channel writes, the embedded server;
- ``config``, ``metrics``, ``tasks``: shared by every room.

The Python client and the generated API stubs are the ``atp_client`` distribution, which this one
depends on. Importing this package loads nothing but itself: the names below are imported on first
use (a publisher process never loads the server).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app.service import AtpService
    from .config import ServiceConfig
    from .engine import Clock, Engine, ManualClock, SystemClock
    from .storage import EmbeddedRedis, free_port

_LAZY = {
    "AtpService": "app.service",
    "Clock": "engine", "ManualClock": "engine", "SystemClock": "engine", "Engine": "engine",
    "ServiceConfig": "config",
    "EmbeddedRedis": "storage", "free_port": "storage",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AtpService",
    "Clock",
    "EmbeddedRedis",
    "Engine",
    "ManualClock",
    "ServiceConfig",
    "SystemClock",
    "free_port",
]
