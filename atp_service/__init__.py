"""The ATP service: gRPC API, shard actors, Redis-stream durability."""

from .client import RETRYABLE, AtpClient, RetryPolicy
from .clock import Clock, ManualClock, SystemClock
from .config import ServiceConfig
from .embedded_redis import EmbeddedRedis, free_port
from .engine import Engine
from .pb.atp.v1 import atp_pb2 as api  # the protobuf messages and enums (api.HELD, api.ReserveRequest, ...)
from .service import AtpService

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
