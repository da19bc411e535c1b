"""What the service will ask of its Redis user, asked at start (``storage/acl.py``: each command
queued inside ``MULTI``, then discarded). With Redis ACLs, a user denied a command the service sends
only later — the snapshot script's ``XTRIM`` of a log, hours in; a channel feed's ``XADD``; an input
stream's ``XACK`` — started, served, and then failed there, group by group. Here: every command the
service sends, on the very keys it sends it to (every shard group's, the channel feeds', the input
streams'), the commands of its Lua scripts on the keys they touch, and ``EVALSHA`` with each
script's keys. A user that may not run ``MULTI`` is not asked (a warning says so; the service sends no
transaction of its own)."""

from __future__ import annotations

from atp_service.app.keyspace import StartupError, check_keyspace
from atp_service.config import ServiceConfig
from atp_service.intake.bounds import bound_key
from atp_service.intake.fence import fence_key
from atp_service.intake.quarantine import ahead_key, drawn_key, run_key, swept_runs_key, written_key
from atp_service.intake.runs import drawn_names_key
from atp_service.intake.unread import (
    answered_key,
    made_again_key,
    owing_key,
    refused_key,
    refused_letters_key,
    trimmed_unread_key,
)
from atp_service.storage.acl import SHA, AclRefused, G, Need, check_acl, check_cluster_client
from atp_service.storage.keys import CHANNELS, Keyspace
from atp_service.storage.log import LogStore
from atp_service.storage.nodes import Nodes

ELSE = "it would start and fail when each is first sent (a snapshot, a channel feed, an input stream)"
GROUP_USES = {
    "owner": "the group's claim, checked by every write", "fence": "the group's fence (R7: a write in doubt settled)",
    "log": "the group's log: appends, recovery, the trim behind each snapshot",
    "log-begun": "the mark of a log written to, set by its first append here (recovery: a log lost whole)",
    "snap": "the group's snapshot", "snap:<piece>": "a snapshot past snapshot_piece_bytes, in several keys",
    "snap-pieces": "a snapshot past snapshot_piece_bytes, in several keys",
    "snap-parts": "a large snapshot written in parts", "snap-parts:<piece>": "a large snapshot written in parts",
    "snap-parts-try": "a large snapshot written in parts", "lease": "the group's lease (ownership = leases)",
    "*": "the scripts that append, fence, claim and snapshot the group"}


def service_needs(config: ServiceConfig, keys: Keyspace, channels: list[str]) -> list[Need]:
    """Every command the service configured by ``config`` will send, on which keys (``channels``:
    the estate's, whose feeds it writes)."""
    pattern = keys.tag(0).replace("{g0}", "{g" + G + "}")
    needs = [need for group in range(config.shards) for need in _group_needs(keys, group, pattern,
                                                                               config.ownership == "leases")]
    needs += _keyspace_needs(config, keys)
    if channels and config.ownership == "keyspace":
        needs += _channel_needs(keys, channels)
    if config.input_streams:
        needs += _input_needs(config)
    return needs + _quarantine_needs(config.quarantine_stream)


def _quarantine_needs(stream: str) -> list[Need]:
    """The quarantine stream's script (``intake/quarantine.py``): an entry a fact, its digest in the set beside."""
    written, ahead, use = written_key(stream), ahead_key(stream), "facts quarantined (E6, E8), each once"
    return [Need(("XADD", stream, "MAXLEN", "~", 1, "*", "f", "v"), stream, use),
            Need(("ZSCORE", written, "d"), written, use), Need(("ZADD", written, 1, "d"), written, use),
            Need(("ZCARD", written), written, use),
            Need(("ZRANGE", written, 0, 0), written, use), Need(("ZREMRANGEBYRANK", written, 0, 0), written, use),
            Need(("HSET", ahead, "d", "v"), ahead, use), Need(("HDEL", ahead, "d"), ahead, use),
            Need(("HLEN", ahead), ahead, use),
            *(Need(("TYPE", key), key, use) for key in (stream, written, ahead)),  # every key's, before any write
            Need(("EVALSHA", SHA, 4, stream, written, written, ahead), stream, use)]  # no run: the set in its place


def _group_needs(keys: Keyspace, g: int, at: str, leased: bool) -> list[Need]:
    """A shard group's: its appends, fences, claims, snapshots (whole and in parts), recovery reads."""
    owner, fence, log_, snap = keys.owner(g), keys.fence(g), keys.log(g), keys.snap(g)
    parts, try_, pieces = keys.snap_parts(g), keys.snap_parts_try(g), keys.snap_pieces(g)
    piece, staged = keys.snap(g, 1), keys.snap_parts(g, 1)  # the keys past the first: asked as their second
    begun = keys.log_begun(g)
    scripted = [owner, log_, fence, snap, parts, try_, pieces, piece, staged, begun]
    asked: list[tuple[tuple[str | int, ...], str]] = [
        (("GET", owner), "owner"), (("SET", owner, "e"), "owner"), (("MGET", owner), "owner"),
        (("GET", fence), "fence"), (("SET", fence, 1), "fence"),
        (("XADD", log_, "1-0", "e", "x"), "log"), (("XTRIM", log_, "MINID", "1-0"), "log"),
        (("XRANGE", log_, "-", "+", "COUNT", 1), "log"), (("XREVRANGE", log_, "+", "-", "COUNT", 1), "log"),
        (("XINFO", "STREAM", log_), "log"), (("EXISTS", log_), "log"),
        (("INCR", begun), "log-begun"), (("EXISTS", begun), "log-begun"),
        (("GET", snap), "snap"), (("SET", snap, "s"), "snap"), (("PERSIST", snap), "snap"),
        (("STRLEN", snap), "snap"), (("GETRANGE", snap, 0, 1), "snap"),
        (("GET", pieces), "snap-pieces"), (("SET", pieces, 2), "snap-pieces"), (("DEL", pieces), "snap-pieces"),
        (("GETRANGE", piece, 0, 1), "snap:<piece>"), (("STRLEN", piece), "snap:<piece>"),
        (("GET", piece), "snap:<piece>"), (("PERSIST", piece), "snap:<piece>"), (("DEL", piece), "snap:<piece>"),
        (("RENAME", parts, snap), "snap-parts"), (("STRLEN", parts), "snap-parts"),
        (("SET", parts, "p", "PX", 1), "snap-parts"), (("APPEND", parts, "p"), "snap-parts"),
        (("PEXPIRE", parts, 1), "snap-parts"),
        (("RENAME", staged, piece), "snap-parts:<piece>"), (("STRLEN", staged), "snap-parts:<piece>"),
        (("SET", staged, "p", "PX", 1), "snap-parts:<piece>"), (("APPEND", staged, "p"), "snap-parts:<piece>"),
        (("PEXPIRE", staged, 1), "snap-parts:<piece>"), (("SET", staged, "p"), "snap-parts:<piece>"),
        (("GET", try_), "snap-parts-try"), (("SET", try_, "t", "PX", 1), "snap-parts-try"),
        (("PEXPIRE", try_, 1), "snap-parts-try"), (("DEL", try_), "snap-parts-try")]
    if leased:
        lease = keys.tag(g) + "lease"
        scripted.append(lease)
        asked += [(("GET", lease), "lease"), (("MGET", lease), "lease"), (("SET", lease, "h", "PX", 1), "lease"),
                  (("PEXPIRE", lease, 1), "lease"), (("DEL", lease), "lease")]
    asked.append((("EVALSHA", SHA, len(scripted), *scripted), "*"))
    return [Need(args, at + name, GROUP_USES[name], g) for args, name in asked]


def _keyspace_needs(config: ServiceConfig, keys: Keyspace) -> list[Need]:
    """The keyspace's own keys (claims, the processes sharing it) and the commands of no key."""
    claims, meta = keys.claims, keys.meta
    needs = [Need(("SCRIPT", "LOAD", "return"), "", "the scripts loaded on a Redis that lacks them"),
             Need(("TIME",), "", "the clocks' offset, epochs"), Need(("PING",), "", "the start"),
             Need(("GET", claims), claims, "claims"), Need(("SET", claims, 1), claims, "claims"),
             Need(("EVALSHA", SHA, 1, claims), claims, "claims"),
             Need(("HGET", meta, "layout"), meta, "the keyspace's layout"),
             Need(("HSETNX", meta, "layout", 2), meta, "the keyspace's layout")]
    if not config.redis_cluster:  # one Redis: a claim of every group at once, ranked among the claimants
        needs += [Need(_on(keys.claimants, cmd, *rest), keys.claimants, "claims") for cmd, *rest in (
            ("ZSCORE", "t"), ("ZADD", 1, "t"), ("ZREMRANGEBYRANK", 0, -65), ("EVALSHA", SHA, 1))]
    if config.ownership == "leases":
        members = keys.members
        needs += [Need(_on(members, cmd, *rest), members, "the processes sharing the keyspace") for cmd, *rest in (
            ("ZREMRANGEBYSCORE", "-inf", 0), ("ZADD", 1, "m"), ("ZREM", "m"), ("ZRANGE", 0, -1), ("EVALSHA", SHA, 1))]
        rid, named = keys.reservation_id("atp-permission-check"), keys.reservation_id("<id>")
        needs += [Need(_on(rid, cmd, *rest), named, "reservation id claims (R5 across processes)") for cmd, *rest in (
            ("GET",), ("SET", 1), ("PTTL",), ("PEXPIRE", 1), ("EVALSHA", SHA, 1))]
    if config.redis_wait_replicas:
        needs.append(Need(("WAIT", 0, 0), "", "redis_wait_replicas"))
    return needs


def _on(key: str, command: str, *rest: str | int) -> tuple[str | int, ...]:
    """``command`` on ``key``: after its other arguments for ``EVALSHA`` (sha, numkeys, keys), else first.
    ``EVALSHA <key> <sha> 1`` would be queued whatever the ACL says of the key: no key read from it."""
    return (command, *rest, key) if command == "EVALSHA" else (command, key, *rest)


def _channel_needs(keys: Keyspace, channels: list[str]) -> list[Need]:
    """The channel feeds: their group's claim and fence, each channel's stream and state hash."""
    owner, fence, use = keys.owner(CHANNELS), keys.fence(CHANNELS), "the channel feeds (C2, C4)"
    needs = [Need(("GET", owner), owner, use), Need(("SET", owner, "e"), owner, use),
             Need(("GET", fence), fence, use), Need(("SET", fence, 1), fence, use)]
    for channel in channels:
        stream, state, again = keys.channel_stream(channel), keys.channel_state(channel), keys.channel_restamp(channel)
        needs += [Need(args, key, use) for args, key in (
            (("HSCAN", again, 0), again), (("HGET", again, "f"), again), (("HDEL", again, "f"), again),  # restamp.py
            (("HLEN", again), again), (("EVAL", "return 0", 1, again), again),  # forgotten by EVAL (channel_store)
            (("XADD", stream, "MAXLEN", "~", 1, "1-0", "f", "v"), stream),
            (("XREVRANGE", stream, "+", "-", "COUNT", 1), stream),
            (("XINFO", "STREAM", stream), stream),  # the write script's and the settle's newest version handed out
            (("XREAD", "COUNT", 1, "STREAMS", stream, "0"), stream),
            (("HSET", state, "f", "v"), state), (("HSCAN", state, 0), state),
            (("EVALSHA", SHA, 4, owner, fence, stream, state), stream))]
    return needs


def _input_needs(config: ServiceConfig) -> list[Need]:
    """The input streams: read through the consumer group, acknowledged, dead-lettered (one script), or quarantined
    (one script, ``intake/quarantine.py``), the count of entries trimmed unread kept in a hash with its answered mark
    (``intake/unread.py``), a dead consumer's entries claimed with the dead letters of those trimmed
    (``intake/claims.py``), the mark of a group made again (``intake/again.py``: set where the group is made, read and
    forgotten by the read), the consumer's token where a group made again starts (``intake/bounds.py``); leased, the
    consumers of processes gone for good removed, what they owed moved to this one's hash (``intake/departed.py``)."""
    group, consumer, streams = config.consumer_group, config.consumer_name, config.input_streams
    owed, dlq = trimmed_unread_key(streams[0], group, consumer), config.dead_letter_stream
    owing = owing_key(streams[0], group)  # the consumers whose reads counted a gap (the sweep's, departed.py)
    marks = [made_again_key(s, group) for s in streams]  # a group made again (intake/again.py)
    use = "the input streams"
    needs = [Need(("XADD", dlq, "MAXLEN", "~", 1, "*", "f", "v"), dlq, "dead letters"),
             Need(("TYPE", dlq), dlq, "dead letters"),
             Need(("XRANGE", dlq, "0-1", "0-1"), dlq, "dead letters"),  # a refused entry's letter, still held
             Need(("EVALSHA", SHA, 2 * len(streams) + 3, *streams, *marks, owed, answered_key(owed), owing), owed, use),
             Need(("SET", answered_key(owed), 1, "PX", 1), answered_key(owed), use),  # the owed hash answered
             Need(("SADD", owing, consumer), owing, use), Need(("TYPE", owing), owing, use)]
    needs += [Need(("EVALSHA", SHA, 3, s, dlq, mark), s, use) for s, mark in zip(streams, marks, strict=True)]
    needs += [Need(args, mark, use) for mark in marks for args in (("GET", mark), ("SET", mark, "0-1"), ("DEL", mark),
                                                                    ("TYPE", mark))]
    quarantine = config.quarantine_stream  # a quarantined fact's entry acknowledged in its script (E8)
    written = written_key(quarantine)  # the group made with its mark where it holds any fact; asked of entries under it
    needs += [Need(("EVALSHA", SHA, 4, s, mark, written, refused_key(s, group)), s, use)
              for s, mark in zip(streams, marks, strict=True)]
    needs += [Need(("EXISTS", written), written, use), Need(("ZMSCORE", written, "d"), written, use)]
    needs += _bound_needs(config, marks, written, use) + _refused_needs(config, dlq)
    ahead = ahead_key(quarantine)  # the entries whose ids ran ahead of their facts' writes, asked with the set
    run = run_key(quarantine, group, consumer)  # this consumer's run: a write of a run before lands nothing
    needs += [Need(("HMGET", ahead, "d"), ahead, use)]
    drawn = drawn_key(quarantine, group, consumer)  # its draws' record: its run swept (runs.SWEPT), read by a write
    needs += _run_needs(config, use)
    needs += [Need((cmd, owed, *rest), owed, use) for cmd, *rest in (
        ("HINCRBY", "s", 1), ("HSETNX", "s", 1), ("HGETALL",), ("HDEL", "s"), ("TYPE",), ("HGET", "s"), ("HLEN",),
        ("HEXISTS", "s"))]
    for s in streams:
        needs += [Need(args, s, use) for args in (
            ("XREADGROUP", "GROUP", group, consumer, "COUNT", 1, "STREAMS", s, ">"),
            ("XREAD", "COUNT", 1, "STREAMS", s, "0"),
            ("XACK", s, group, "0-1"), ("XAUTOCLAIM", s, group, consumer, 0, "0-0"),
            ("XPENDING", s, group, "0-1", "0-1", 1, consumer),  # the quarantine and dead-letter scripts': still ours
            ("XREVRANGE", s, "+", "-", "COUNT", 1),  # the quarantine script's: the stream's newest, named (E8)
            ("TYPE", s),  # the quarantine script's, before its first write
            ("XINFO", "GROUPS", s), ("XINFO", "STREAM", s), ("XGROUP", "CREATE", s, group, "$", "MKSTREAM"),
            ("XGROUP", "SETID", s, group, "0-0"), ("XRANGE", s, "-", "+", "COUNT", 1), ("EXISTS", s))]
    if config.ownership == "leases":  # a consumer of a process gone for good removed, its count moved (departed.py)
        needs += _departed_needs(config, owed, use)  # and the draw of its run, with its mark
    needs += _sent_whole(needs) if config.redis_cluster else []  # each script above the cluster client's
    return needs + [Need(("EVALSHA", SHA, 6, quarantine, written, run, ahead, drawn, s), s, use)  # a write lane's
                    for s in streams]


def _bound_needs(config: ServiceConfig, marks: list[str], written: str, use: str) -> list[Need]:
    """The consumer's tokens, one per stream, where a group made again starts (``intake/bounds.py``): set with what
    the group holds read (one script), read where the group is made (``unread._MAKE``)."""
    streams = config.input_streams
    tokens = [bound_key(s, config.consumer_group, config.consumer_name) for s in streams]
    needs = [Need(("EVALSHA", SHA, 2 * len(streams), *streams, *tokens), streams[0], use)]
    return needs + [Need(args, at, use) for s, mark, key in zip(streams, marks, tokens, strict=True) for args, at in (
        (("EVALSHA", SHA, 5, s, mark, written, refused_key(s, config.consumer_group), key), s), (("GET", key), key),
        (("SET", key, 1, "PX", 1), key))]


def _refused_needs(config: ServiceConfig, dlq: str) -> list[Need]:
    """The entries refused as stamped in the future (E7) kept beside each input stream (``intake/refused_kept.py``):
    written, trimmed and bounded by the dead-letter script, asked for where a group was made again, and whether any is
    kept asked where the group is made (``unread._MAKE``)."""
    needs: list[Need] = []
    use = "entries refused in the future (E7), kept refused"
    for s in config.input_streams:
        kept, letters = refused_key(s, config.consumer_group), refused_letters_key(s, config.consumer_group)
        fence = fence_key(config.input_streams[0], config.consumer_group, config.consumer_name)  # fence.py
        needs.append(Need(("EVALSHA", SHA, 5, dlq, s, kept, letters, fence), s, use))
        needs += [Need((cmd, kept, *rest), kept, use) for cmd, *rest in (
            ("ZADD", 1, "m"), ("ZPOPMIN", 1), ("ZRANGEBYSCORE", 0, 1), ("ZREMRANGEBYSCORE", 0, 1), ("ZCARD",),
            ("TYPE",), ("EXISTS",))]
        needs += [Need((cmd, letters, *rest), letters, use) for cmd, *rest in (
            ("HSET", "f", "v"), ("HDEL", "f"), ("HMGET", "f"), ("TYPE",))]
    fence, why = fence_key(config.input_streams[0], config.consumer_group, config.consumer_name), "dead letters' fence"
    return [*needs, Need(("GET", fence), fence, why), Need(("SET", fence, 1, "PX", 1), fence, why)]  # intake/fence.py


def _sent_whole(needs: list[Need]) -> list[Need]:
    """``EVAL`` with the keys of each script of ``needs`` (``EVALSHA``): on a Redis Cluster the input streams'
    client sends a script its node lacks (restarted, a replica promoted) whole (``storage/clients._LoadedWhereRun``),
    where the write lanes load it (``SCRIPT LOAD``). Denied, the reads and claims failed NOPERM from the first
    restart or failover of the streams' node, for good."""
    return [Need(("EVAL", "return 0", *need.args[2:]), need.pattern, need.use, need.group)
            for need in needs if need.args[0] == "EVALSHA"]


def _run_needs(config: ServiceConfig, use: str) -> list[Need]:
    """The consumer's quarantine run (``intake/runs.py``): drawn once per token in one script, its draws' record
    beside (a retry of a draw whose answer was lost, or one landing late, draws no second run); read at each sweep
    round."""
    quarantine, group, consumer = config.quarantine_stream, config.consumer_group, config.consumer_name
    run, swept = run_key(quarantine, group, consumer), swept_runs_key(quarantine)
    drawn, names = drawn_key(quarantine, group, consumer), drawn_names_key(written_key(quarantine), group)
    needs = [Need(("INCR", run), run, use), Need(("GET", run), run, use), Need(("SET", run, 1), run, use),  # SET: lost
             Need(("TYPE", run), run, use), Need(("GET", swept), swept, use), Need(("TYPE", swept), swept, use),
             Need(("SET", swept, 0), swept, use), Need(("TYPE", drawn), drawn, use),
             Need(("TYPE", names), names, use), Need(("SADD", names, consumer), names, use)]  # named with its key
    needs += [Need((cmd, drawn, *rest), drawn, use) for cmd, *rest in (  # ZREVRANGE: a write's, its last draw
        ("ZSCORE", "t"), ("ZADD", 1, "t"), ("ZREMRANGEBYRANK", 0, -2), ("PEXPIRE", 1),
        ("ZREVRANGE", 0, 0, "WITHSCORES"))]
    if config.ownership != "leases":  # leased, the draw names the consumer's answered mark too (_departed_needs)
        needs.append(Need(("EVALSHA", SHA, 4, run, swept, drawn, names), run, use))
    else:  # read at each sweep round (runs.swept): the tokens at the key's run
        needs.append(Need(("ZRANGEBYSCORE", drawn, 1, 1), drawn, use))
    return needs


def _departed_needs(config: ServiceConfig, owed: str, use: str) -> list[Need]:
    """Leased, the sweep of the consumers of processes gone for good (``intake/departed.py``): each removed with its
    hash of entries trimmed unread (moved to ``owed``, this consumer's), its answered mark and its quarantine run."""
    group, consumer, streams, quarantine = (config.consumer_group, config.consumer_name, config.input_streams,
                                            config.quarantine_stream)
    swept = swept_runs_key(quarantine)  # the highest run removed with its consumer
    owing = owing_key(streams[0], group)  # listed too: one in no group (its group deleted since) still owing
    gone = trimmed_unread_key(streams[0], group, "gone@0")
    mark = answered_key(gone)  # read where its owner answered it since (unread.answered_key), deleted with it
    ran = run_key(quarantine, group, "gone@0")  # its quarantine run, removed with it, the highest kept (swept)
    drew = drawn_key(quarantine, group, "gone@0")  # its draws' record: its run swept set there, left to expire
    own = answered_key(owed)  # this consumer's, set as its run is drawn (runs.DRAW): no sweep takes that run
    drawn, names = drawn_key(quarantine, group, consumer), drawn_names_key(written_key(quarantine), group)
    needs = [Need(("EVALSHA", SHA, len(streams) + 8, *streams, owed, swept, owing, names, gone, mark, ran, drew), owed,
                  use),
             Need(("EVALSHA", SHA, 5, run_key(quarantine, group, consumer), swept, drawn, names, own), swept, use),
             Need(("SMEMBERS", names), names, use), Need(("SREM", names, "c"), names, use),  # the drawn names swept
             Need(("TYPE", own), own, use),
             Need(("HSET", owed, "s", 1), owed, use), Need(("HGETALL", gone), gone, use),
             Need(("SET", swept, 1), swept, use), Need(("TYPE", swept), swept, use),
             Need(("SMEMBERS", owing), owing, use), Need(("SREM", owing, "c"), owing, use),
             Need(("SADD", owing, consumer), owing, use)]  # the sweeper owing what it moved
    needs += [Need((c, key), key, use) for key in (gone, mark, ran) for c in ("TYPE", "DEL", "GET")]
    needs += [Need(args, drew, use) for args in (("TYPE", drew), ("ZSCORE", drew, "s"), ("ZADD", drew, 1, "s"),
                                                 ("PEXPIRE", drew, 1))]
    needs += [Need(args, s, use) for s in streams for args in (
        ("XINFO", "CONSUMERS", s, group), ("XGROUP", "DELCONSUMER", s, group, consumer))]
    return needs


async def check_redis(store: LogStore, config: ServiceConfig, channels: list[str]) -> None:
    """What the start checks of its Redis before it claims anything (``keyspace.check_keyspace``),
    then that its user may run every command the service will send (``channels``: the estate's): a
    start refused for a command denied has fenced no instance still serving."""
    await check_keyspace(store, config.shards, config.ownership)
    await check_permissions(store, service_needs(config, store.keys, channels))


async def first_reads(nodes: Nodes, url: str, config: ServiceConfig) -> None:
    """The start's first call to Redis (a ``PING``). On a Redis Cluster, first whether the user may
    run the cluster client's own first reads (the slot map, the command table): denied, they read as
    a Redis not up, and the start waited for it, then gave up."""
    if config.redis_cluster:
        try:
            await check_cluster_client(url, config.redis_timeout_s, "redis_url", "the service", ELSE)
        except AclRefused as refused:
            raise StartupError(str(refused)) from None
    await nodes.reader.ping()


async def check_permissions(store: LogStore, needs: list[Need]) -> None:
    """Refuse to start (``StartupError``) naming each command of ``needs`` the Redis user may not
    run, with its keys; on a cluster, each primary is asked."""
    try:
        await check_acl(store.nodes, needs, "redis_url", "the service", ELSE)
    except AclRefused as refused:
        raise StartupError(str(refused)) from None
