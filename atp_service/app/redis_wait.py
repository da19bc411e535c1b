"""How the start waits for Redis: every step of it that reads or writes Redis (the first PING, the
keyspace checks and claim, each shard's recovery, the channel feeds, the input streams' groups) is
tried again while Redis does not answer, health NOT_SERVING meanwhile, instead of failing the
start (exit status 1) on a blip or a failover after the first PING."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import AskError, ResponseError

from atp_service.app.keyspace import StartupError
from atp_service.config_values import redacted
from atp_service.retry import Backoff, BackoffPolicy
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.records import Fenced
from atp_service.storage.resp import not_a_cluster_client, passing

log = logging.getLogger("atp_service.app.service")
T = TypeVar("T")
REDIS_AT_START = BackoffPolicy(first_s=0.1, max_s=5.0)
"""Waits between tries to reach Redis at start (health stays NOT_SERVING meanwhile); a refusal that passes
(``resp.passing``) is waited out alike."""


async def while_redis_is_away(redis_url: str, attempt: Callable[[], Awaitable[T]], *, cluster: bool = False) -> T:
    """``attempt()`` again (it must be safe to repeat) until Redis answers it: a blip during the
    start delays it instead of failing it. Not waited out: a refusal waiting does not cure (a key of
    another type, a command the ACL denies) fails the start naming it (``StartupError``, exit 2);
    a claim refused by a newer one (``Fenced``) is not Redis being away, and is raised as it is.
    ``NotReplicated`` (``redis_wait_replicas``) is waited out: the replicas may come back (R7). ``cluster``:
    the start's Redis is a Redis Cluster (``redis_cluster``), whose redirections pass (a reshard, a failover)."""
    backoff = Backoff(REDIS_AT_START)
    while True:
        try:
            return await attempt()
        except Fenced:
            raise
        except ResponseError as exc:
            if isinstance(exc, AskError) and not cluster:
                raise StartupError(not_a_cluster_client(redacted(redis_url), exc)) from None
            if not passing(exc):
                raise StartupError(f"redis_url: Redis at {redacted(redis_url)} refused a start-up command: "
                                   f"{exc}") from None
            error: BaseException = exc
        except STORAGE_ERRORS as exc:
            error = exc
        log.warning("waiting for Redis at %s: %s", redacted(redis_url), error, extra={"event": "redis_waiting"})
        await backoff.wait()
