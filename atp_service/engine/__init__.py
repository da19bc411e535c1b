"""The engine: the router (``Engine``), one actor per shard owning its ``Ledger``, the typed
messages between them, cross-shard coordination and the service clock."""

from .clock import Clock, ManualClock, SystemClock
from .coordinator import Coordinator
from .router import Engine
from .shard import ShardActor

__all__ = ["Clock", "Coordinator", "Engine", "ManualClock", "ShardActor", "SystemClock"]
