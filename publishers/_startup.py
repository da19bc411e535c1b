"""Start-up: wait for Redis, bounded, instead of dying with a traceback when it is not up yet."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import AskError, ResponseError

from atp_service.config_values import redacted
from atp_service.retry import Backoff, BackoffPolicy
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.redis_config import config_value, node_configs
from atp_service.storage.resp import not_a_cluster_client, passing

log = logging.getLogger("atp-publisher")
__all__ = ["RedisEvicts", "RedisRefused", "RedisUnavailable", "RedisWait", "redacted", "refuse_evicting_redis",
           "wait_for_redis"]


@dataclass(frozen=True)
class RedisWait:
    total_s: float = 300.0
    """Longest time to wait for Redis at start before giving up (0: forever)."""

    first_s: float = 0.1
    """Wait after the first failed try; each further one twice as long (with jitter) up to ``max_s``."""

    max_s: float = 5.0
    """Longest wait between two tries."""

    def __post_init__(self) -> None:
        if not self.total_s >= 0:  # NaN too: it never ran out, the supervisor never told (exit 3)
            raise ValueError(f"--redis-wait: at least 0 (0: forever), got {self.total_s}")
        if not 0 < self.first_s <= self.max_s:
            raise ValueError("--redis-backoff-max: at least the first wait (0.1 s)")


class RedisUnavailable(Exception):
    """Redis did not answer within ``RedisWait.total_s``."""


class RedisRefused(Exception):
    """Redis answered a start-up command with a refusal no wait cures (a key of another type): exit status 2."""


async def wait_for_redis(attempt: Callable[[], Awaitable[object]], wait: RedisWait, where: str,
                         sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                         stopped: Callable[[], bool] = lambda: False,
                         clock: Callable[[], float] = time.monotonic, cluster: bool = False) -> bool:
    """``attempt()`` until it gets through (True), one log line per failed try; False when
    ``stopped()`` during a wait; ``RedisUnavailable`` once ``wait.total_s`` has passed (never with 0);
    ``RedisRefused`` at once for a refusal that does not pass (``resp.passing``), as the service's start:
    a redirection (ASK, MOVED) too where ``cluster`` is not set (``--redis-cluster``): ``where`` is a node of a
    Redis Cluster that a client of one Redis cannot follow, and no wait cures it (``not_a_cluster_client``)."""
    backoff = Backoff(BackoffPolicy(first_s=wait.first_s, max_s=wait.max_s))
    started = clock()
    while True:
        try:
            await attempt()
            if backoff.failures:
                log.info("Redis at %s answered after %d failed tries", where, backoff.failures)
            return True
        except STORAGE_ERRORS as exc:
            if isinstance(exc, AskError) and not cluster:  # MOVED too: a cluster's node, as the service refuses it
                raise RedisRefused(not_a_cluster_client(where, exc)) from None
            if isinstance(exc, ResponseError) and not passing(exc):  # Redis answered: waiting would not change it
                raise RedisRefused(f"Redis at {where} refused a start-up command: {exc}") from None
            delay = backoff.next_delay()
            if wait.total_s:
                left = wait.total_s - (clock() - started)
                if left <= 0:
                    raise RedisUnavailable(f"Redis at {where} did not answer within {wait.total_s:g} s "
                                           f"({backoff.failures} tries): {exc}") from None
                delay = min(delay, left)
            log.warning("waiting for Redis at %s (try %d failed: %s); next try in %.2f s", where,
                        backoff.failures, exc or type(exc).__name__, delay)
            await sleep(delay)
            if stopped():
                return False


class RedisEvicts(Exception):
    """Redis may evict the publisher's keys to make room (its ``maxmemory-policy``)."""


async def refuse_evicting_redis(client: Any) -> None:
    """Refuse a Redis whose ``maxmemory-policy`` is not ``noeviction``: the lease is the one key of a
    feed with a time to live, so a ``volatile-*`` policy evicts it first (``allkeys-*``: it or the
    delivered versions), and a standby takes the group while its holder still sends — two
    publishers of one destination, an older level delivered after a newer one (C3, C4). Where
    ``CONFIG`` is forbidden (managed Redis) nothing can be checked: the operator sets it there."""
    try:  # on a cluster every node: the one holding the ``{avail}`` keys (or promoted later) is any
        configs = await node_configs(client, "maxmemory-policy")
    except ResponseError as exc:
        if passing(exc):  # BUSY (a long script): not CONFIG forbidden; the start waits, then asks again
            raise
        log.warning("Redis maxmemory-policy cannot be read (%s): make sure it is noeviction — a Redis that "
                    "evicts may drop the publisher's lease", exc)
        return
    for where, config in configs:
        policy = config_value(config, "maxmemory-policy") or "noeviction"
        if policy != "noeviction":
            raise RedisEvicts(f"{where} maxmemory-policy is {policy}: it may evict the publisher's lease, and a "
                              "standby deliver beside its holder; set maxmemory-policy noeviction")
