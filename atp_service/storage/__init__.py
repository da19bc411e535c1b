"""Everything that knows Redis: the fenced log and snapshots (``log``, ``durability``), the
channel feed writes (``channel_store``) and the embedded ``redis-server``."""

from .embedded_redis import DataDirInUse, EmbeddedRedis, RedisDidNotStart, RedisNotInstalled, StartAbandoned, free_port
from .log import LogStore, connect

__all__ = ["DataDirInUse", "EmbeddedRedis", "LogStore", "RedisDidNotStart", "RedisNotInstalled", "StartAbandoned",
           "connect", "free_port"]
