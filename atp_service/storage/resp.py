"""Redis replies as the service reads them, whatever the protocol (RESP2 or RESP3) and whether the
client decodes responses: the one place that knows their shapes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    ClusterDownError,
    MovedError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)

PASSING_REFUSALS = (AskError, ClusterDownError, OutOfMemoryError, ReadOnlyError, TryAgainError)
"""Refusals Redis gives for a while and then stops giving (a failover, memory freed): waited out
at start like no answer; any other refusal fails the start (the service's ``StartupError``, the
publisher's ``RedisRefused``: exit status 2). ``AskError`` (and
``MovedError``, one of them): a write script of the start sent where the slot map read earlier says
its slot is, during a reshard or after a failover; the writer never follows a redirection (a write
is never sent twice), it reads the map again before its next call there (``Nodes``). Waited out
on a cluster alone (``redis_cluster``): to a client of one Redis, a redirection says its URL names a
node of a Redis Cluster, which no wait cures (``not_a_cluster_client``)."""
PASSING_CODES = frozenset({"NOREPLICAS", "BUSY", "MISCONF"})
"""Refusals of the same kind redis-py raises as a plain ``ResponseError``, known by their code: writes
refused while fewer replicas than ``min-replicas-to-write`` are connected (one restarting,
resyncing), a script running past ``busy-reply-threshold``, and writes refused while Redis's last RDB
save failed (``stop-writes-on-bgsave-error``: its disk full or gone; Redis saves again by itself every
few seconds, and the first save that succeeds lets writes in). Each ends without anyone acting on the
service, so it must not stop the start as refused for its data (exit status 2: never restarted)."""


def passing(refusal: ResponseError) -> bool:
    """Whether Redis gives ``refusal`` for a while and then stops giving it (waited out at start)."""
    return isinstance(refusal, PASSING_REFUSALS) or str(refusal).split(" ", 1)[0] in PASSING_CODES


def not_a_cluster_client(where: str, redirection: AskError) -> str:
    """Why a start redirected (ASK or MOVED) by a Redis it takes for one Redis is refused (the service's and a
    publisher's, exit status 2): waited out, it waited for ever, or until its bound, saying it waited for Redis
    (health NOT_SERVING, a publisher's exit 3: never a refusal a supervisor or an operator acts on). ``where``:
    the Redis URL, redacted."""
    return (f"redis_url: Redis at {where} redirected a start-up command ({type(redirection).__name__} "
            f"{redirection}): it is a node of a Redis Cluster; start with --redis-cluster (ATP_REDIS_CLUSTER=true)")


def as_text(value: Any) -> str:
    """A Redis reply value as text (clients may or may not decode responses)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def seq_of(entry_id: Any) -> int:
    """The number a service-chosen stream id ``<n>-0`` carries (a log seq, a channel version)."""
    return int(as_text(entry_id).split("-", 1)[0])


def stream_entries(reply: Any) -> Iterator[tuple[Any, Any, Any]]:
    """(stream, entry id, fields) of an XREAD / XREADGROUP reply, in order: the RESP2 list form,
    or the RESP3 map form, where a stream's entries may come wrapped in one more list."""
    streams = reply.items() if isinstance(reply, dict) else (reply or ())
    for stream, entries in streams:
        if entries and isinstance(entries[0], list) and entries[0] and isinstance(entries[0][0], list):
            entries = entries[0]
        for entry_id, fields in entries:
            yield stream, entry_id, fields


async def make_group(client: Any, stream: str, group: str, start: bytes | str = "0") -> bool:
    """The consumer group ``group`` on ``stream`` (made with the stream if need be), reading after
    ``start``, where it is missing: True when made now, False when it was there (BUSYGROUP)."""
    try:
        await client.xgroup_create(stream, group, id=start, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
        return False
    return True


def no_such_key(exc: BaseException) -> bool:
    """A stream command refused because its key does not exist (XINFO of a stream never made, or
    deleted)."""
    return isinstance(exc, ResponseError) and "no such key" in str(exc).lower()


async def stream_info(client: Any, stream: str) -> dict[str, Any] | None:
    """``XINFO STREAM`` of ``stream``; None when it does not exist."""
    try:
        info: dict[str, Any] = await client.xinfo_stream(stream)
    except ResponseError as exc:
        if no_such_key(exc):
            return None
        raise
    return info


def out_of_memory(exc: BaseException | None) -> bool:
    """A write Redis refused because it is at its ``maxmemory`` (``noeviction``): refused before the
    command ran — a script's first write is checked, so nothing of the script was applied."""
    return isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, ResponseError) and "used memory > 'maxmemory'" in str(exc))


def slot_not_served(exc: BaseException | None) -> str | None:
    """The Redis Cluster's word for a write its node would not run (``TRYAGAIN``: a script's keys
    split by a slot migrating; ``ASK``/``MOVED``: the slot is served elsewhere now; ``CLUSTERDOWN``),
    else None. Each is answered before the script runs: nothing of it was applied, nor ever will be."""
    for kind, word in ((TryAgainError, "TRYAGAIN"), (MovedError, "MOVED"), (AskError, "ASK"),
                       (ClusterDownError, "CLUSTERDOWN")):
        if isinstance(exc, kind):
            return word
    return None


def group_lost(exc: BaseException) -> bool:
    """A read refused because its stream or consumer group no longer exists (deleted, or a Redis
    restored from before it): no read succeeds until the group is made again (``make_group``)."""
    return isinstance(exc, ResponseError) and "NOGROUP" in str(exc)


SCRIPT_DENIALS = ("The user executing the script can't run", "The user executing the script can't access")
"""How Redis 7.0 words an ACL denial of a command or key inside a script (an ``ERR``); 7.2 and later say ``NOPERM``."""


def redis_said(exc: BaseException) -> str:
    """What Redis said, without redis-py's note of the pipeline command it answered (``Command # 1 (HMGET …) of
    pipeline caused error: ('WRONGTYPE …',)``)."""
    said = str(exc)
    noted = re.fullmatch(r"Command # \d+ \(.*\) of pipeline caused error: \((['\"])(.*)\1,\)", said, re.DOTALL)
    return noted.group(2) if noted else said


def denied(exc: BaseException) -> bool:
    """A command refused by the Redis user's ACL: ``NOPERM`` (redis-py's ``NoPermissionError``), a script's own
    ``DENIED <command> on <key>`` (``scripts.ACL_LUA``), or Redis 7.0's ``ERR`` for a denial inside a script."""
    said = redis_said(exc)
    return isinstance(exc, NoPermissionError) or (isinstance(exc, ResponseError) and (
        said.startswith(("NOPERM", "DENIED ")) or any(words in said for words in SCRIPT_DENIALS)))


def lasting_refusal(exc: BaseException) -> str | None:
    """What kind of refusal waiting does not cure ``exc`` is: ``permission`` (``denied``, or the Redis user's login
    refused: ``WRONGPASS``, ``NOAUTH``, the user turned off or deleted or its password changed), ``wrong_type`` (a key
    of another type), ``refused`` (any other, ``passing`` ones and a group lost, which its reader makes again, aside);
    None: not one (Redis away, a refusal that passes)."""
    if isinstance(exc, (AuthenticationError, AuthorizationError)):  # ConnectionErrors to redis-py, yet no wait cures
        return "permission"
    if not isinstance(exc, ResponseError) or passing(exc) or group_lost(exc):
        return None
    if redis_said(exc).split(" ", 1)[0] in PASSING_CODES:  # one of a pipeline's commands'
        return None
    if denied(exc):
        return "permission"
    return "wrong_type" if redis_said(exc).startswith("WRONGTYPE") else "refused"

