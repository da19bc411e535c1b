"""The clients the service and the publishers talk to Redis through: never retrying on their own,
commands packed by hiredis (``nodes.py`` makes its write lanes' connections with them)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import ReadOnlyError
from redis.maint_notifications import MaintNotificationsConfig


def connect(url: str, timeout_s: float) -> aioredis.Redis:
    """A client that never retries on its own: a blind retry of an append could log it twice.
    Its commands are packed by hiredis (see ``_HiredisPacking``). A connection whose command was
    refused READONLY is closed (``retry_on_error``, with no retry): it reaches a replica — a
    failover behind this address — and the next one is made to wherever the address leads now.
    The asyncio ``Retry``: redis-py's asyncio client calls a synchronous one's ``call_with_retry``
    with a coroutine function, which never fails inside it, so it never closes the connection."""
    client = aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        retry_on_error=[ReadOnlyError],
        health_check_interval=0,
        maint_notifications_config=_no_maint_notifications(),
    )
    pool = client.connection_pool
    pool.connection_class = _hiredis_packing(pool.connection_class)
    return client


class _HiredisPacking:
    """redis-py's asyncio connections pack commands in Python, argument by argument (its sync ones
    use hiredis): a 1,000-id XACK or a group commit of many entries cost ~0.5 µs per argument.
    hiredis (already the reply parser) packs them in C, about 4x faster."""

    _serializer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        packed: list[bytes] = self._serializer.pack(*args)
        return packed


_packing_classes: dict[type, type] = {}


def _hiredis_packing(base: type) -> type:
    """``base`` (TCP, TLS or unix-socket connection, as the URL chose) with hiredis packing."""
    if base not in _packing_classes:
        _packing_classes[base] = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})
    return _packing_classes[base]


def connect_any(url: str, timeout_s: float, *, cluster: bool = False) -> Any:
    """A client for single-key commands: of one Redis, or of a Redis Cluster (routed by key).
    Neither retries on its own (``connect``): redis-py's cluster client sends a command that timed
    out again, up to ten times by default, so an append whose first try only waited on a stalled
    primary landed twice, and a call bounded by ``timeout_s`` took eleven times as long. After a
    connection error it still learns the slots again before its next command; redirections
    (MOVED/ASK) are followed as before."""
    if not cluster:
        return connect(url, timeout_s)
    return aioredis.RedisCluster.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                          retry=Retry(NoBackoff(), 0),
                                          maint_notifications_config=_no_maint_notifications())


async def close_any(client: Any) -> None:
    """``client`` closed (``connect_any``'s), every connection of a cluster client's nodes included:
    redis-py's cluster client closes nothing while it waits to read the slot map again — after any
    command a node did not answer (the writer's ``CLUSTER NODES`` too) — and left them all open."""
    await client.aclose()
    if isinstance(client, aioredis.RedisCluster):  # closing again is harmless: each connection's disconnect
        await client.nodes_manager.aclose()
        await client.nodes_manager.aclose("startup_nodes")


def _no_maint_notifications() -> MaintNotificationsConfig:
    """Maintenance notifications off. While they are on (redis-py's default, ``auto``), its pool
    hands out an idle connection without checking that the server still holds it open, so the first
    command after a Redis restart fails on a dead socket; the service never retries blindly, so that
    one failure would reach a caller or stall a reader."""
    return MaintNotificationsConfig(enabled=False)


def node_url(url: str, host: str, port: int) -> str:
    """``url`` (credentials, TLS, options) pointed at another node."""
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{host}:{port}" if auth else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
