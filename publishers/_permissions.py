"""What a publisher will ask of its Redis user, asked at start (``atp_service.storage.acl``: each
command queued inside ``MULTI``, then discarded). A user denied one of them — ``XAUTOCLAIM`` inside
the takeover script, ``HSET`` of the delivered versions inside the settle script, ``XADD`` inside the
dead letters' script — started, stood by, and failed the day it took the lease over from a publisher that died:
the channel's availability stopped reaching its destination when a standby was needed most.
"""

from __future__ import annotations

from atp_service.storage.acl import Need, check_acl, check_cluster_client
from atp_service.storage.nodes import Nodes, connect_any

from ._config import PublisherConfig

SCRIPT = "return 0"  # the body EVAL is asked with: queued only, never run


def publisher_needs(cfg: PublisherConfig) -> list[Need]:
    """Every command the publisher configured by ``cfg`` sends, on which keys: its own, its scripts'
    (``_lease.py``, ``_claim.py``: checked against the caller's ACL as they run) and ``EVAL`` with
    each script's keys."""
    lease, stream, group, consumer = cfg.lease_key, cfg.stream, cfg.group, cfg.consumer
    delivered, state, owed, owe_all = cfg.delivered_key, cfg.state_key, cfg.redeliver_key, cfg.redeliver_all_key
    asked: list[tuple[tuple[str | int, ...], str, str]] = [
        (("SET", lease, "t", "NX", "PX", 1), lease, "the delivery lease (one publisher per destination)"),
        (("GET", lease), lease, "the delivery lease"), (("PEXPIRE", lease, 1), lease, "the lease's renewal"),
        (("DEL", lease), lease, "the lease's release"),
        (("XGROUP", "CREATE", stream, group, "0", "MKSTREAM"), stream, "the consumer group"),
        (("XINFO", "GROUPS", stream), stream, "where the group has read to"),
        (("XINFO", "CONSUMERS", stream, group), stream, "the takeover of a publisher's pending entries"),
        (("XINFO", "STREAM", stream), stream, "entries trimmed before the group read them (their keys resynced)"),
        (("XREADGROUP", "GROUP", group, consumer, "COUNT", 1, "STREAMS", stream, ">"), stream, "the channel feed"),
        (("XREAD", "COUNT", 1, "BLOCK", 1, "STREAMS", stream, "0-0"), stream, "the wait for new entries"),
        (("XRANGE", stream, "-", "+", "COUNT", 1), stream, "a standby's look for a start after Redis lost data (C4)"),
        (("EXISTS", stream), stream, "the read of new entries (the group's position)"),
        (("XACK", stream, group, "0-1"), stream, "entries delivered (C3)"),
        (("XAUTOCLAIM", stream, group, consumer, 0, "0-0", "JUSTID"), stream, "the takeover of pending entries"),
        (("XPENDING", stream, group, "-", "+", 1, consumer), stream, "consumers removed after a takeover"),
        (("XGROUP", "DELCONSUMER", stream, group, consumer), stream, "consumers removed after a takeover"),
        (("HGETALL", delivered), delivered, "the versions delivered (idempotence by version)"),
        (("HGET", delivered, "k"), delivered, "the versions delivered"),
        (("HSET", delivered, "k", 1), delivered, "the versions delivered"),
        (("HSCAN", state, 0), state, "the newest value of each key (a resync, C4)"),
        (("HMGET", state, "k"), state,
         "the newest value of keys owed a redelivery, or delivered where entries were trimmed unread (C4)"),
        (("XADD", cfg.dead_letter_stream, "MAXLEN", "~", 1, "*", "f", "v"), cfg.dead_letter_stream, "dead letters"),
        (("HLEN", owed), owed, "keys owed their newest value (C4)"), (("HSET", owed, "k", "v"), owed, "keys owed"),
        (("HEXISTS", owed, "k"), owed, "keys owed already (the bound counts new ones only)"),
        (("HSCAN", owed, 0), owed, "keys owed"), (("HDEL", owed, "k"), owed, "keys owed, settled"),
        (("INCR", owe_all), owe_all, "a resync of every key owed"), (("GET", owe_all), owe_all, "a resync owed"),
        (("DEL", owe_all), owe_all, "a resync done"),
        (("TYPE", cfg.restamp_key), cfg.restamp_key, "keys delivered at versions Redis lost: a hash (C3, C4)"),
        (("HGET", cfg.restamp_key, "k"), cfg.restamp_key, "keys delivered at versions Redis lost (C3, C4)"),
        (("HSET", cfg.restamp_key, "k", 1), cfg.restamp_key, "keys delivered at versions Redis lost (C3, C4)")]
    scripts = [("read", (stream, owe_all)), ("settle", (lease, delivered, stream)),
               ("dead letters", (lease, cfg.dead_letter_stream, owed, owe_all)), ("forget", (lease, owed)),
               ("delete if same", (lease, owe_all)), ("takeover", (lease, stream, owe_all)),
               ("consumers removed", (lease, stream)), ("renew and release", (lease,))]
    # Named by all its keys: two scripts sharing one were named as one, and a denied lease key by another.
    asked += [(("EVAL", SCRIPT, len(keys), *keys), ", ".join(keys), f"the {name} script, under the lease")
              for name, keys in scripts]
    # ``_replicas``: the renewal that what was read is confirmed behind, on a write lane (EVALSHA), then WAIT (C4)
    asked += [(("EVALSHA", "0" * 40, 1, lease), lease, "the renewal confirmed by --wait-replicas"),
              (("SCRIPT", "LOAD", SCRIPT), "", "the renewal's script, loaded where a node lacks it")]
    if cfg.wait_replicas:
        asked.append((("WAIT", 0, 0), "", "--wait-replicas (what was read held by the replicas)"))
    return [Need(args, key, use) for args, key, use in asked] + _types_checked(cfg)


def _types_checked(cfg: PublisherConfig) -> list[Need]:
    """The types a script asks before its first write: the dead letters' of each of its keys
    (``_redeliver.DEAD_LETTER``), the read's and the takeover's of the mark (``_reading.mark_checked``)."""
    return [Need(("TYPE", key), key, "the dead letters' script: its keys' types, before it writes")
            for key in (cfg.dead_letter_stream, cfg.redeliver_key)] + [
        Need(("TYPE", cfg.redeliver_all_key), cfg.redeliver_all_key, "the dead letters', the read's and the "
             "takeover's scripts: the mark's type, before they write")]


async def check_publisher_acl(cfg: PublisherConfig, redis_url: str, cluster: bool, timeout_s: float = 5.0) -> None:
    """``AclRefused`` naming each command the publisher sends that its Redis user may not run (each
    primary of a cluster asked: the node holding the channel's slot may change by a failover). On
    connections of its own, closed after: a ``DISCARD`` refused leaves one inside ``MULTI``."""
    else_ = "it would stand by and fail when it took the lease over, or at its first dead letter"
    if cluster:  # before the cluster client reads the slot map: denied, that read fails as if Redis were away
        await check_cluster_client(redis_url, timeout_s, "--redis-url", "the publisher", else_)
    nodes = Nodes(connect_any(redis_url, timeout_s, cluster=cluster), cluster=cluster, url=redis_url,
                  timeout_s=timeout_s)
    try:
        # No MULTI/EXEC of its own: its dead letters are a script under the lease (``_redeliver``).
        await check_acl(nodes, publisher_needs(cfg), "--redis-url", "the publisher", else_)
    finally:
        await nodes.aclose()
