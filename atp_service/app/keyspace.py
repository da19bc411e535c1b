"""What the service checks of its Redis keyspace before it claims it: the key layout and shard
count it was written with, and whether Redis keeps what it acknowledges."""

from __future__ import annotations

import logging
import re
from typing import Any

from redis.exceptions import NoPermissionError, ReadOnlyError, ResponseError

from atp_service.storage.keys import CHANNELS, LAYOUT, Keyspace
from atp_service.storage.log import LogStore
from atp_service.storage.redis_config import config_value, node_configs, node_versions
from atp_service.storage.resp import as_text, passing

log = logging.getLogger(__name__)

MIN_REDIS = (7, 0)
"""The oldest Redis served: the snapshot and fence scripts carry Lua flags (``allow-oom``, Redis 7.0)."""


class StartupError(RuntimeError):
    """The service cannot start as configured; the message names the setting to change."""


class ConfigMismatch(StartupError):
    """The keyspace in Redis was written with settings this start does not have."""


async def check_keyspace(store: LogStore, shards: int, ownership: str = "keyspace") -> None:
    """Shard placement depends on the shard count, and key names on the layout: refuse to start
    on a keyspace written with another (rather than misread it or write beside it). Nor may
    processes of both ownership modes run on one keyspace: a ``keyspace`` start claims every group
    from under the leased processes, which take them back (each fencing the other in turn)."""
    client, key = store.client, store.keys.meta
    await _check_version(client)
    await _refuse_replica(client)
    if not await client.exists(key) and await _exists_any(client, store.keys.legacy_keys()):
        await client.hset(key, "layout", 1)  # written before the layout was recorded
    await client.hsetnx(key, "layout", LAYOUT)
    layout = int(await client.hget(key, "layout"))
    if layout != LAYOUT:
        raise ConfigMismatch(
            f"key_prefix: the keyspace {store.prefix!r} in Redis was written in key layout {layout}, this "
            f"version reads layout {LAYOUT} (see CHANGELOG); start on an empty keyspace (another --key-prefix "
            "or an empty Redis), or run the version that wrote it")
    await client.hsetnx(key, "shards", shards)
    stored = int(await client.hget(key, "shards"))
    if stored != shards:
        raise ConfigMismatch(f"shards: the log in Redis was written with {stored} shards, not {shards}; "
                             "start with the same --shards (or an empty Redis)")
    await client.hsetnx(key, "ownership", ownership)
    mode = as_text(await client.hget(key, "ownership"))
    if mode != ownership:
        raise ConfigMismatch(f"ownership: the keyspace {store.prefix!r} is served with ownership={mode}, not "
                             f"{ownership}; to change it, stop every process of the keyspace, then run "
                             f"`redis-cli HSET {key} ownership {ownership}` and start them all with --ownership "
                             f"{ownership}")
    if ownership == "leases":
        await _refuse_frozen_feeds(client, store.keys)
    await _check_persistence(client, leased=ownership == "leases")


async def _refuse_frozen_feeds(client: Any, keys: Keyspace) -> None:
    """Leased processes serve no channel feeds: a keyspace moved to leases from one that published
    them would leave each feed at its last value, and a stock-out never reach the channels'
    destinations (C2, C4). Refused, naming a feed, until they are deleted (or ownership kept)."""
    own = {keys.owner(CHANNELS), keys.fence(CHANNELS)}
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", keys.tag(CHANNELS)) + "*"  # the prefix taken literally
    async for raw in client.scan_iter(match=pattern, count=1000):
        if (key := as_text(raw)) not in own:
            raise StartupError(
                f"channel feeds: the keyspace holds channel feeds ({key!r} among them) and ownership=leases "
                f"does not serve them: they would stay at their last values, a stock-out never published. "
                f"Stop their atp-publishers and delete the feeds' keys (`redis-cli --scan --pattern "
                f"'{pattern}'`, each but {keys.tag(CHANNELS)}owner and fence), or keep ownership=keyspace")


async def _exists_any(client: Any, keys: list[str]) -> bool:
    """Whether any of ``keys`` exists (one by one: on a cluster they may be in different slots)."""
    for key in keys:
        if await client.exists(key):
            return True
    return False


async def _check_version(client: Any) -> None:
    """Refuse a Redis older than ``MIN_REDIS`` before anything is written to it: it refuses every
    script with flags (the snapshots, the fences), so logs would never be trimmed nor a write in doubt
    settled — found at the first snapshot, hours into serving, instead of at start."""
    try:
        versions = await node_versions(client)
    except ResponseError as exc:  # INFO forbidden (rare, even on managed Redis): the scripts will say
        if passing(exc):  # BUSY (a long script): no refusal of INFO, the start waits (redis_wait)
            raise
        log.warning("the Redis version cannot be read (%s): make sure it is 7.0 or newer", exc)
        return
    for where, version in versions:
        refusal = version_refusal(where, version)
        if refusal is not None:
            raise StartupError(refusal)


async def _refuse_replica(client: Any) -> None:
    """Write nothing to a replica (R7). One with ``replica-read-only no`` takes every write, and drops
    them all at its next full resync from its primary (a restart, a link broken too long): changes
    acknowledged that no other copy ever had. Refused as a read-only replica refuses a write
    (``ReadOnlyError``), which the start waits out (a failover may promote it), naming it. A Redis
    Cluster client writes to primaries only: not asked."""
    if hasattr(client, "get_nodes"):
        return
    try:
        replication = await client.info("replication")
    except ResponseError as exc:  # INFO forbidden: _check_version said so
        if passing(exc):  # BUSY (a long script): the start waits (redis_wait), then asks again
            raise
        return
    if replication.get("role") in ("slave", "replica"):
        primary = f"{replication.get('master_host')}:{replication.get('master_port')}"
        raise ReadOnlyError(f"redis_url: this Redis is a replica of {primary}, which drops what is written to it "
                            "at its next resync: waiting for it to be promoted; point redis_url at the primary")


def version_refusal(where: str, version: str) -> str | None:
    """Why ``version`` (``INFO server``'s ``redis_version``) cannot be served, or None."""
    parts = re.match(r"(\d+)\.(\d+)", version)
    if parts is not None and (int(parts[1]), int(parts[2])) >= MIN_REDIS:
        return None
    return (f"{where} runs Redis {version}: the service needs Redis {MIN_REDIS[0]}.{MIN_REDIS[1]} or newer (its "
            "snapshot and fence scripts carry Lua flags, which let a full Redis trim its logs and settle a "
            "write in doubt)")


async def _check_persistence(client: Any, leased: bool = False) -> None:
    """Acknowledged means in Redis; surviving a Redis crash also needs its AOF. Say so when it is off,
    and refuse a Redis that may evict keys (the log, a fence) to make room — with leased groups, also
    keys with a time to live (``volatile-*``): those are the leases, and an evicted lease lets another
    process take a group its owner still answers for. On a cluster every node is asked, by name."""
    try:
        configs = await node_configs(client, "maxmemory-policy", "appendonly", "appendfsync", "save")
    except ResponseError as exc:  # managed Redis often forbids CONFIG: nothing to check. Not answering
        # is no such refusal, nor one that passes (BUSY: a long script): the start waits (redis_wait)
        # rather than skip the eviction check (an evicted log loses acknowledged changes, R7).
        if passing(exc):
            raise
        log.warning("Redis CONFIG cannot be read (%s), so maxmemory-policy, appendonly and appendfsync are not "
                    "checked: make sure it is noeviction (a Redis that evicts may drop a log, a fence or a claim) "
                    "and that its AOF is on (appendonly yes, appendfsync everysec or always) — else acknowledged "
                    "changes can be lost", exc)
        return
    for where, config in configs:
        refusal = eviction_refusal(where, config_value(config, "maxmemory-policy"), leased)
        if refusal is not None:
            raise StartupError(refusal)
    for where, config in configs:
        _say_persistence(where, config)


def eviction_refusal(where: str, policy: str | None, leased: bool) -> str | None:
    """Why a Redis whose ``maxmemory-policy`` is ``policy`` may lose what the service keeps, or None."""
    evicts = policy or "noeviction"
    if evicts.startswith("allkeys-"):
        return (f"{where} maxmemory-policy is {evicts}: it may evict the log or a fence, losing acknowledged "
                "changes; set maxmemory-policy noeviction")
    if leased and evicts != "noeviction":
        return (f"{where} maxmemory-policy is {evicts}: with ownership = leases it may evict a lease, and another "
                "process take a group its owner still answers for; set maxmemory-policy noeviction")
    return None


async def watch_eviction(store: LogStore, unsafe: Any) -> bool:
    """The start's eviction check (``_check_persistence``) again, while serving: a ``CONFIG SET
    maxmemory-policy allkeys-lru`` went unseen until Redis, under memory pressure, evicted a log or
    a fence. One ``CONFIG GET`` per node; ``unsafe`` (``atp_redis_eviction_policy_unsafe{node}``) is
    set for each, and a change said in the log. Writes go on being taken: eviction happens only at
    ``maxmemory``, and refusing every write for a setting would make an outage of a risk
    (OPERATIONS.md, "Redis may evict the service's keys"). False: ``CONFIG`` is forbidden or renamed
    (the start said so), ask no more — each refusal would be one more error in Redis's stats and ``ACL LOG``."""
    refusing: set[str] = set()  # nodes not answering, replicas answering BUSY (a long script): last value kept
    failed: list[BaseException] = []  # primaries that did not answer (named in ``refusing`` too), the rest asked
    try:
        configs = await node_configs(store.client, "maxmemory-policy", refusing=refusing, failed=failed)
    except ResponseError as exc:  # else (BUSY: a long script) asked again next time
        return not (isinstance(exc, NoPermissionError) or "unknown command" in str(exc).lower())
    seen = {sample.labels["node"]: sample.value for metric in unsafe.collect() for sample in metric.samples}
    answered = {_node_label(where) for where, _ in configs} | refusing
    for gone in seen.keys() - answered:  # a node removed, or demoted and not asked: its last value would fire for good
        unsafe.remove(gone)
    for where, config in configs:
        node = _node_label(where)
        policy = config_value(config, "maxmemory-policy")
        refusal, was = eviction_refusal(where, policy, store.leased), seen.get(node, 0.0)
        unsafe.labels(node).set(refusal is not None)
        if refusal is not None and not was:
            log.error("%s (changed while serving: it may lose acknowledged changes under memory pressure)", refusal,
                      extra={"event": "redis_eviction_unsafe", "node": node, "policy": policy})
        elif refusal is None and was:
            log.info("%s maxmemory-policy is %s again: it evicts none of the service's keys", where, policy,
                     extra={"event": "redis_eviction_safe", "node": node, "policy": policy})
    if failed:  # once the others are read: the owner check reads the slot map again (a failover), as before
        raise failed[0]
    return True


def _node_label(where: str) -> str:
    """The ``node`` label of a node named ``where`` by ``node_configs`` (one Redis: ``redis``)."""
    return where.removeprefix("Redis node ").split(" ")[0] if where.startswith("Redis node ") else "redis"


def _say_persistence(where: str, config: dict[Any, Any]) -> None:
    """Say what of the acknowledged changes a crash or restart of this Redis loses (R7): a WARNING
    for each setting that loses more than ``appendfsync everysec``'s ~1 s, an INFO line otherwise."""
    fsync = config_value(config, "appendfsync")
    if config_value(config, "appendonly") != "yes" and not (config_value(config, "save") or "").strip():
        log.warning("%s has no persistence (appendonly no, save \"\"): any restart of it, a clean one too, "
                    "comes back empty, every acknowledged change lost (set appendonly yes, appendfsync "
                    "everysec or always)", where)
    elif config_value(config, "appendonly") != "yes":
        log.warning("%s runs without appendonly: acknowledged changes survive a service crash but not a "
                    "Redis crash (set appendonly yes, appendfsync everysec or always)", where)
    elif fsync == "no":
        log.warning("%s appendfsync is no: the OS writes the AOF to disk when it likes (Linux: about every "
                    "30 s), and a host crash loses that much of what was acknowledged (set appendfsync "
                    "everysec, ~1 s, or appendfsync always, nothing)", where)
    else:
        log.info("%s AOF on, appendfsync=%s", where, fsync)


def replaced_said(store: LogStore, prefix: str) -> bool:
    """Say why ``store``'s writes were refused. True: a newer instance claimed the keyspace (this one
    must not be restarted on it: exit 3). False: no newer claim exists — Redis lost this instance's
    (``Fenced.claim_lost``: it restarted from older data, or failed over to a replica that missed the
    claim), and likely entries it had acknowledged; this instance stops to be restarted (exit 4),
    which claims the keyspace again and serves what Redis holds, as after a log found short (R7)."""
    if store.claim_lost:
        log.error("Redis no longer holds this instance's claim on keyspace %r, nor a newer one (it restarted "
                  "from older data, or failed over to a replica that missed it): this instance takes no more "
                  "changes and stops to be restarted", prefix,
                  extra={"event": "stopping", "why": "claim_lost", "key_prefix": prefix})
        return False
    log.error("a newer instance claimed keyspace %r (a write of this one was refused): this instance "
              "takes no more changes and stops", prefix, extra={"event": "replaced", "key_prefix": prefix})
    return True
