"""What a Redis, or every node of a Redis Cluster, says of its own settings (``CONFIG GET``): read
by the service and by ``atp-publisher`` at start to refuse a Redis that may evict their keys."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_service.storage.resp import passing

log = logging.getLogger(__name__)
T = TypeVar("T")


async def node_configs(client: Any, *names: str, refusing: set[str] | None = None,
                       failed: list[BaseException] | None = None) -> list[tuple[str, dict[Any, Any]]]:
    """The settings ``names`` of each node, with the words naming it (``ResponseError`` where
    ``CONFIG`` is forbidden). A cluster client sends ``CONFIG GET`` to one node (redis-py: its
    default node), so a primary elsewhere set to evict — the keys of its slots lost under memory
    pressure — went unseen: each node is asked. A replica too (a failover promotes it), unless it
    does not answer: it is then named in a warning. ``refusing``: where given, the names of the
    replicas refusing for a while (``BUSY``) are added there instead, unwarned: the caller keeps what
    it read of them last (``watch_eviction``, while serving). ``failed``: where given too, a node that does
    not answer is named in ``refusing`` (a replica's last value taken away resolved its alert, nothing
    changed), a primary's failure added there, and the nodes after it asked all the same: raised at once,
    one hung primary left every node after it unread while it hung."""

    async def ask(**target: Any) -> dict[Any, Any]:
        return {k: v for name in names for k, v in (await client.config_get(name, **target)).items()}

    return await _each_node(client, ask, "CONFIG GET", "make sure its maxmemory-policy is noeviction", refusing,
                            failed)


async def node_versions(client: Any) -> list[tuple[str, str]]:
    """Each node's ``redis_version`` (``INFO server``), with the words naming it, as ``node_configs``."""

    async def ask(**target: Any) -> str:
        return str((await client.info("server", **target))["redis_version"])

    return await _each_node(client, ask, "INFO server", "make sure it runs Redis 7.0 or newer")


async def _each_node(client: Any, ask: Callable[..., Awaitable[T]], command: str,
                     unanswered: str, refusing: set[str] | None = None,
                     failed: list[BaseException] | None = None) -> list[tuple[str, T]]:
    """``ask``'s answer from one Redis, or from every node of a cluster (``target_nodes``); a replica
    that does not answer is named in a warning saying ``unanswered`` (a failover promotes it), and so is
    one that refuses for a while (``resp.passing``: ``BUSY``, a long read-only script there) — taken for
    ``CONFIG`` forbidden, that one refusal had no node of the cluster checked."""
    if not hasattr(client, "get_nodes"):  # one Redis
        return [("Redis", await ask())]
    if not client.get_nodes():
        await client.initialize()  # a cluster client learns its nodes at its first command
    answers: list[tuple[str, T]] = []
    for node in client.get_nodes():
        where = f"Redis node {node.name} ({node.server_type})"
        try:
            answer = await ask(target_nodes=node)
        except (ConnectionError, TimeoutError, RedisConnectionError, RedisTimeoutError, ResponseError) as exc:
            if failed is not None and refusing is not None and not isinstance(exc, ResponseError):
                refusing.add(node.name)  # not answering, while serving: its last value kept (a replica's, warned)
                if node.server_type == "primary":  # and the others asked (see ``node_configs``)
                    failed.append(exc)
                    continue
            if node.server_type == "primary" or (isinstance(exc, ResponseError) and not passing(exc)):
                raise
            if refusing is not None and isinstance(exc, ResponseError):  # not passed over: what was read stands
                refusing.add(node.name)
                continue
            log.warning("%s did not answer %s (%s): %s — a failover promotes it", where, command, exc, unanswered)
            continue
        answers.append((where, answer))
    return answers


def config_value(config: dict[Any, Any], name: str) -> str | None:
    """``name``'s value in a ``CONFIG GET`` answer (keys and values bytes or text)."""
    value = config.get(name.encode(), config.get(name))
    return value.decode() if isinstance(value, bytes) else value
