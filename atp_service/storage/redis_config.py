"""What a Redis, or every node of a Redis Cluster, says of its own settings (``CONFIG GET``): read
by the service and by ``atp-publisher`` at start to refuse a Redis that may evict their keys."""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)


async def node_configs(client: Any, *names: str) -> list[tuple[str, dict[Any, Any]]]:
    """The settings ``names`` of each node, with the words naming it (``ResponseError`` where
    ``CONFIG`` is forbidden). A cluster client sends ``CONFIG GET`` to one node (redis-py: its
    default node), so a primary elsewhere set to evict — the keys of its slots lost under memory
    pressure — went unseen: each node is asked. A replica too (a failover promotes it), unless it
    does not answer: it is then named in a warning."""
    if not hasattr(client, "get_nodes"):  # one Redis
        return [("Redis", {k: v for name in names for k, v in (await client.config_get(name)).items()})]
    if not client.get_nodes():
        await client.initialize()  # a cluster client learns its nodes at its first command
    configs: list[tuple[str, dict[Any, Any]]] = []
    for node in client.get_nodes():
        where = f"Redis node {node.name} ({node.server_type})"
        try:
            config = {k: v for name in names
                      for k, v in (await client.config_get(name, target_nodes=node)).items()}
        except (ConnectionError, TimeoutError, RedisConnectionError, RedisTimeoutError) as exc:
            if node.server_type == "primary":
                raise
            log.warning("%s did not answer CONFIG GET (%s): make sure its maxmemory-policy is noeviction — "
                        "a failover promotes it", where, exc)
            continue
        configs.append((where, config))
    return configs


def config_value(config: dict[Any, Any], name: str) -> str | None:
    """``name``'s value in a ``CONFIG GET`` answer (keys and values bytes or text)."""
    value = config.get(name.encode(), config.get(name))
    return value.decode() if isinstance(value, bytes) else value
