"""A Redis user its ACL denies a command the service sends is refused at start, naming the command
and its keys — not started to fail when the command is first sent (a snapshot's trim, hours in).
Each against a real redis-server (and a real Redis Cluster) with a restricted ACL user."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from atp_service import AtpService
from atp_service.app.keyspace import StartupError
from atp_service.app.permissions import check_permissions, service_needs
from atp_service.config import ServiceConfig
from atp_service.storage.clients import close_any, connect_any
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.embedded_redis import EmbeddedRedis
from atp_service.storage.keys import Keyspace
from atp_service.storage.log import LogStore
from atp_service.storage.nodes import Call, Script, open_nodes
from tests.conftest import test_config as make_config
from tests.slot_moves import SlotMove

USER, PASSWORD = "atp-svc", "pw-atp-svc"
PACKAGE = Path(__file__).parents[3] / "atp_service"


def as_user(url: str) -> str:
    """``url`` (``redis://host:port/0``) with the restricted user's credentials."""
    return url.replace("redis://", f"redis://{USER}:{PASSWORD}@", 1)


async def set_user(url: str, *rules: str) -> None:
    async with aioredis.Redis.from_url(url) as admin:
        await admin.execute_command("ACL", "SETUSER", USER, "reset", "on", f">{PASSWORD}", "&*", *rules)


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.execute_command("ACL", "DELUSER", USER)
    await client.aclose()


async def refused_start(url: str, cfg: ServiceConfig | None = None) -> str:
    """The refusal a start with ``cfg`` (the tests' default config) on ``url`` ends in."""
    service = AtpService(cfg or make_config(), url)
    try:
        with pytest.raises(StartupError) as refused:
            await service.start()
    finally:
        await service.stop(grace_s=0)
    return str(refused.value)


async def test_a_user_denied_the_snapshot_trim_is_refused_at_start_naming_it(redis_url: str,
                                                                             admin: aioredis.Redis) -> None:
    """``XTRIM`` is sent only inside the snapshot scripts (checked against the caller's ACL as they
    run): such a user started, served, and its first snapshot failed hours in — the log never
    trimmed again. Refused at start, named with its keys, nothing claimed."""
    await set_user(redis_url, "~*", "+@all", "-xtrim")
    said = await refused_start(as_user(redis_url))
    assert "XTRIM on atp:{g*}:log (groups 0-3)" in said, said
    assert "trim behind each snapshot" in said
    assert not await admin.exists("atp:{g0}:owner")  # refused before the claim: no running instance fenced


async def test_a_group_whose_keys_are_read_only_is_named_alone(redis_url: str, admin: aioredis.Redis) -> None:
    """Key patterns may leave one shard group's keys read-only: its appends would fail, the others'
    not. The refusal names each write denied, with that group only."""
    writable = [f"~atp:{{g{g}}}:*" for g in (0, 1, 3)] + ["~atp:{avail}:*", "~atp:claim*", "~atp:meta", "~atp:in:*",
                                                           "~atp:dlq", "~atp:quarantine"]
    await set_user(redis_url, "%R~*", *writable, "+@all")
    said = await refused_start(as_user(redis_url))
    assert "XADD on atp:{g*}:log (groups 2):" in said, said
    assert "SET on atp:{g*}:owner (groups 2):" in said
    assert "EVALSHA on atp:{g*}:* (groups 2):" in said
    assert "groups 0" not in said and "groups 1" not in said and "(groups 3)" not in said


async def test_every_command_the_service_sends_is_named_when_denied(redis_url: str, admin: aioredis.Redis) -> None:
    """Each command of the checked list, denied alone, is named — and the list holds every command
    the service's Lua scripts call (a script's command missing from it would go unchecked)."""
    cfg = make_config(ownership="keyspace")
    needs = service_needs(cfg, Keyspace(cfg.key_prefix), ["web"])
    asked = {need.command for need in needs}
    # The members' and the id claims' scripts run with leases only.
    leased = make_config(ownership="leases", advertise_address="127.0.0.1:1")
    asked_any = asked | {need.command for need in service_needs(leased, Keyspace(leased.key_prefix), ["web"])}
    in_scripts = {m.upper() for path in PACKAGE.rglob("*.py")
                  for m in re.findall(r"redis\.p?call\('(\w+)'", path.read_text())}
    unpacked = {"XREADGROUP", "XGROUP"}  # intake/unread.py calls them through a table of arguments
    assert in_scripts - {c.split()[0] for c in asked_any} == set()
    assert unpacked <= {c.split()[0] for c in asked}
    store = LogStore(open_nodes(as_user(redis_url), 2.0), cfg.key_prefix, 1)
    try:
        for command in sorted(asked):
            await set_user(redis_url, "~*", "+@all", "-" + command.lower().replace(" ", "|"))
            with pytest.raises(StartupError, match=re.escape(f"  {command}") + "[ :]"):
                await check_permissions(store, needs)
        await set_user(redis_url, "~*", "+@all")
        await check_permissions(store, needs)  # nothing denied: no refusal
        assert await admin.dbsize() == 0  # asked inside MULTI, discarded: nothing ran
    finally:
        await store.nodes.aclose()


async def test_leased_processes_need_their_leases_and_members(redis_url: str, admin: aioredis.Redis) -> None:
    cfg = make_config(ownership="leases", advertise_address="127.0.0.1:1")
    commands = {need.command for need in service_needs(cfg, Keyspace(cfg.key_prefix), [])}
    assert {"ZRANGE", "ZREM", "ZREMRANGEBYSCORE", "PEXPIRE", "DEL"} <= commands
    await set_user(redis_url, "~*", "+@all", "-zremrangebyscore")
    store = LogStore(open_nodes(as_user(redis_url), 2.0), cfg.key_prefix, 1)
    try:
        with pytest.raises(StartupError, match=re.escape("ZREMRANGEBYSCORE on atp:members")):
            await check_permissions(store, service_needs(cfg, Keyspace(cfg.key_prefix), []))
    finally:
        await store.nodes.aclose()


async def test_leased_processes_need_the_reservation_id_claims(redis_url: str, admin: aioredis.Redis) -> None:
    """A leased process claims each new reservation id (R5 across processes) under ``<prefix>rid:{<id>}``:
    a user whose key patterns leave those out would have refused every Reserve of a new id. Named at
    start — the script's call too (``EVALSHA`` with the key where Redis reads it: after the sha and
    the count, else its ACL was never asked about the key)."""
    cfg = make_config(ownership="leases", advertise_address="127.0.0.1:1")
    await set_user(redis_url, "~atp:{*", "~atp:claim*", "~atp:members", "~atp:meta", "~atp:in:*", "~atp:dlq",
                   "~atp:quarantine", "+@all")
    store = LogStore(open_nodes(as_user(redis_url), 2.0), cfg.key_prefix, 1)
    try:
        with pytest.raises(StartupError) as refused:
            await check_permissions(store, service_needs(cfg, Keyspace(cfg.key_prefix), []))
    finally:
        await store.nodes.aclose()
    said = str(refused.value)
    for command in ("GET", "SET", "PTTL", "PEXPIRE", "EVALSHA"):
        assert f"{command} on atp:rid:{{<id>}}" in said, said
    assert "atp:members" not in said and "atp:{g" not in said, said


async def test_a_user_denied_multi_is_warned_of_and_started(redis_url: str, admin: aioredis.Redis,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The check queues its questions in MULTI: a user denied it cannot be asked, which is said."""
    await set_user(redis_url, "~*", "+@all", "-multi")
    service = AtpService(make_config(input_streams=()), as_user(redis_url))
    try:
        with caplog.at_level(logging.WARNING, logger="atp_service.app.permissions"):
            await service.start()
    finally:
        await service.stop(grace_s=0)
    assert any("may not run MULTI" in r.getMessage() for r in caplog.records)


async def test_on_a_cluster_each_primary_is_asked(redis_cluster: EmbeddedCluster, cluster_url: str) -> None:
    """ACLs are each node's own: one primary denying a command fails the groups whose slots it
    serves, there. The refusal names that node."""
    denying = redis_cluster.primaries[1]
    try:
        for node in redis_cluster.nodes:
            await set_user(node.url, "~*", "+@all", *(["-xtrim"] if node is denying else []))
        cfg = make_config(redis_cluster=True, input_streams=())
        said = await refused_start(as_user(cluster_url), cfg)
        assert "XTRIM on atp:{g*}:log" in said and f"Redis node 127.0.0.1:{denying.port} (primary)" in said, said
    finally:
        for node in redis_cluster.nodes:
            async with aioredis.Redis.from_url(node.url) as client:
                await client.execute_command("ACL", "DELUSER", USER)


async def test_the_user_operations_md_suggests_starts(redis_url: str, admin: aioredis.Redis) -> None:
    """The least user OPERATIONS.md suggests ("Security") may run everything the service sends."""
    await set_user(redis_url, "~atp:*", "+@read", "+@write", "+@stream", "+@scripting", "+@transaction", "+ping",
                   "+time", "+wait", "-@dangerous")
    service = AtpService(make_config(estate=Path(__file__).parents[3] / "atp_service/app/demo_estate.toml"),
                         as_user(redis_url))
    try:
        await service.start()
        assert service.channels is not None  # the channel feeds' commands asked and allowed too
    finally:
        await service.stop(grace_s=0)


async def test_a_redis_whose_multi_opens_no_transaction_runs_none_of_the_commands(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The check's commands are harmless only inside a transaction. Where ``MULTI`` opens none (renamed
    by ``rename-command``, a proxy that does not pass it on), each ran for real: every group's snapshot
    overwritten, its owner key, a log entry written, an input stream's group moved back to its first
    entry. Not asked there, said in a warning; nothing written."""
    cfg = make_config()
    with EmbeddedRedis(tmp_path / "redis", extra_args=["--rename-command", "MULTI", "MULTI-RENAMED"]) as server:
        async with aioredis.Redis.from_url(server.url) as admin:
            await admin.set("atp:{g0}:snap", "the group's snapshot")
            store = LogStore(open_nodes(server.url, 2.0), cfg.key_prefix, 1)
            try:
                with caplog.at_level(logging.WARNING, logger="atp_service.app.permissions"):
                    await check_permissions(store, service_needs(cfg, Keyspace(cfg.key_prefix), ["web"]))
            finally:
                await store.nodes.aclose()
            assert await admin.get("atp:{g0}:snap") == b"the group's snapshot"
            assert await admin.dbsize() == 1, await admin.keys()
    assert any("MULTI" in r.getMessage() and "not checked" in r.getMessage() for r in caplog.records), caplog.text


async def test_a_user_denied_discard_leaves_no_transaction_open_on_the_write_connections(
        redis_url: str, admin: aioredis.Redis) -> None:
    """A connection the check leaves inside ``MULTI`` (its ``DISCARD`` denied) went back to the writes'
    lane: every write sent on it after was answered ``QUEUED`` and never ran."""
    await set_user(redis_url, "~*", "+@all", "-discard")
    cfg = make_config()
    store = LogStore(open_nodes(as_user(redis_url), 2.0), cfg.key_prefix, 1)
    try:
        await check_permissions(store, service_needs(cfg, Keyspace(cfg.key_prefix), []))
        write = Call(Script("redis.call('SET', KEYS[1], 'written') return redis.call('GET', KEYS[1])"),
                     ["atp:{g0}:probe"], [])
        assert await store.nodes.run_one(write) == b"written"  # run, not QUEUED inside the check's MULTI
    finally:
        await store.nodes.aclose()


async def test_a_user_denied_a_command_the_service_never_sends_starts(redis_url: str, admin: aioredis.Redis) -> None:
    """Only what the service sends is asked for: a user denied ``XCLAIM`` (the service never sends it; it
    claims with ``XAUTOCLAIM``) starts. Each command asked is one the service's code sends (a script's or
    redis-py's: ``XPENDING`` is, by the quarantine script and the refusal bound)."""
    sent = "\n".join(path.read_text() for path in PACKAGE.rglob("*.py") if path.name != "permissions.py")
    configs = [make_config(redis_wait_replicas=1), make_config(ownership="leases", advertise_address="127.0.0.1:1")]
    for command in {need.command.split()[0] for c in configs for need in service_needs(c, Keyspace("atp:"), ["w"])}:
        assert re.search(rf"['\"]{command}['\"]|\.{command.lower()}(_\w+)?\(", sent), f"{command} is never sent"
    await set_user(redis_url, "~*", "+@all", "-xclaim")
    cfg = make_config()
    store = LogStore(open_nodes(as_user(redis_url), 2.0), cfg.key_prefix, 1)
    try:
        await check_permissions(store, service_needs(cfg, Keyspace(cfg.key_prefix), ["web"]))
    finally:
        await store.nodes.aclose()


async def test_the_user_operations_md_suggests_starts_on_a_database_other_than_0(
        redis_url: str, admin: aioredis.Redis) -> None:
    """Every connection to a database other than 0 sends ``SELECT`` first: the least user OPERATIONS.md
    suggests, with what it says such a URL adds, starts there (without it the start names ``select``)."""
    text = (Path(__file__).parents[3] / "docs" / "OPERATIONS.md").read_text()
    least = re.search(r"`ACL SETUSER atp on >PASSWORD ([^`]+)`", text)
    on_database = re.search(r"database other than 0 \(`[^`]+`, one Redis only\)\s+also `([^`]+)`", text)
    assert least and on_database, "OPERATIONS.md gives the service's least ACL, and what a database other than 0 adds"
    url = as_user(redis_url).rsplit("/", 1)[0] + "/3"
    await set_user(redis_url, *[r for r in least.group(1).split() if r not in ("on", ">PASSWORD")])
    assert "'select'" in await refused_start(url)
    await set_user(redis_url, *[r for r in (least.group(1) + " " + on_database.group(1)).split()
                                if r not in ("on", ">PASSWORD")])
    service = AtpService(make_config(), url)
    try:
        await service.start()
    finally:
        await service.stop(grace_s=0)


async def test_the_user_operations_md_suggests_starts_on_a_cluster(redis_cluster: EmbeddedCluster,
                                                                 cluster_url: str) -> None:
    """On a Redis Cluster the cluster client reads the slot map and the command table before any
    command: the least user OPERATIONS.md suggests, with what it says to add on a cluster, starts."""
    text = (Path(__file__).parents[3] / "docs" / "OPERATIONS.md").read_text()
    least = re.search(r"`ACL SETUSER atp on >PASSWORD ([^`]+)`", text)
    on_cluster = re.search(r"on a Redis Cluster\s+also `([^`]+)`", text)
    assert least and on_cluster, "OPERATIONS.md gives the service's least ACL, and what a cluster adds"
    rules = least.group(1).split() + on_cluster.group(1).split()
    try:
        for node in redis_cluster.nodes:
            await set_user(node.url, *[r for r in rules if r not in ("on", ">PASSWORD")])
        service = AtpService(make_config(redis_cluster=True, input_streams=()), as_user(cluster_url))
        try:
            await service.start()
        finally:
            await service.stop(grace_s=0)
    finally:
        for node in redis_cluster.nodes:
            async with aioredis.Redis.from_url(node.url) as client:
                await client.execute_command("ACL", "DELUSER", USER)


async def test_on_a_cluster_a_user_denied_the_slot_map_is_refused_at_start_naming_it(
        redis_cluster: EmbeddedCluster, cluster_url: str) -> None:
    """The cluster client reads the slot map (``CLUSTER SLOTS``) before any command: denied, it read as
    no cluster there ("Cluster mode is not enabled"), a Redis not up, and the start waited for good."""
    try:
        for node in redis_cluster.nodes:
            await set_user(node.url, "~*", "+@all", "-cluster|slots")
        said = await refused_start(as_user(cluster_url), make_config(redis_cluster=True, input_streams=()))
        assert "redis_url: the Redis user may not run commands the service sends" in said, said
        assert "CLUSTER SLOTS: the cluster's slot map, read first" in said and "COMMAND:" not in said, said
    finally:
        for node in redis_cluster.nodes:
            async with aioredis.Redis.from_url(node.url) as client:
                await client.execute_command("ACL", "DELUSER", USER)


async def test_the_user_operations_md_suggests_on_a_cluster_reads_a_key_of_a_slot_migrating(
        redis_cluster: EmbeddedCluster, cluster_url: str) -> None:
    """A key of a slot migrating, moved to the importing node already, is read there after ``ASKING`` (the cluster
    client, ``HashScan``): the least user OPERATIONS.md suggested on a cluster may not run it, and every such read
    failed NOPERM for as long as the slot migrated (for good, a reshard left half-done) — a start refused (exit 2),
    a running process's reads failing. It is granted, and a user denied it is refused at start naming it."""
    text = (Path(__file__).parents[3] / "docs" / "OPERATIONS.md").read_text()
    least = re.search(r"`ACL SETUSER atp on >PASSWORD ([^`]+)`", text)
    on_cluster = re.search(r"on a Redis Cluster\s+also `([^`]+)`", text)
    assert least and on_cluster, "OPERATIONS.md gives the service's least ACL, and what a cluster adds"
    rules = [r for r in least.group(1).split() + on_cluster.group(1).split() if r not in ("on", ">PASSWORD")]
    key = "atp:{asked}:state"
    moves = []
    try:
        for node in redis_cluster.nodes:
            await set_user(node.url, *rules)
        with redis.RedisCluster.from_url(redis_cluster.url) as admin:
            admin.hset(key, mapping={"f": 1})
            slot, source = admin.keyslot(key), int(admin.get_node_from_key(key).port)
        moves.append(move := SlotMove(redis_cluster, slot, source,
                                      next(n.port for n in redis_cluster.primaries if n.port != source)))
        move.begin()
        move.move_keys()
        client = connect_any(as_user(cluster_url), 5.0, cluster=True)
        try:
            assert await client.hgetall(key) == {b"f": b"1"}
        finally:
            await close_any(client)
        for node in redis_cluster.nodes:
            await set_user(node.url, *rules, "-asking")
        said = await refused_start(as_user(cluster_url), make_config(redis_cluster=True, input_streams=()))
        assert "ASKING: " in said, said
    finally:
        for move in moves:
            move.finish()
        for node in redis_cluster.nodes:
            async with aioredis.Redis.from_url(node.url) as admin_client:
                await admin_client.execute_command("ACL", "DELUSER", USER)
