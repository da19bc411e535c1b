"""A publisher whose Redis user its ACL denies a command it sends is refused at start, naming the
command and its key — not left standing by to fail the day it takes the lease over. Against a real
redis-server with a restricted ACL user, the publisher run as a process."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from atp_service.storage.acl import AclRefused
from atp_service.storage.channel_wire import to_fields
from atp_service.storage.embedded_cluster import EmbeddedCluster
from publishers import PublisherConfig
from publishers._permissions import check_publisher_acl, publisher_needs
from reservation import ChannelUpdate, StockStatus

USER, PASSWORD = "atp-pub", "pw-atp-pub"
PACKAGE = Path(__file__).parents[2] / "publishers"
OPERATIONS = Path(__file__).parents[2] / "docs" / "OPERATIONS.md"
DEADLINE_S = 60.0  # a guard against hanging, not a timing


@pytest.fixture
def admin(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.execute_command("ACL", "DELUSER", USER)
    client.close()


def as_user(admin: redis.Redis, url: str, *rules: str) -> str:
    """``url`` with the credentials of a user of the ACL ``rules`` (set now)."""
    admin.execute_command("ACL", "SETUSER", USER, "reset", "on", f">{PASSWORD}", *rules)
    return url.replace("redis://", f"redis://{USER}:{PASSWORD}@", 1)


def run_publisher(tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "publishers.cli", "--channel", "web", "--adapter", "jsonl",
                           "--file", str(tmp_path / "web.jsonl"), "--redis-url", url, "--metrics-port", "-1",
                           "--redis-wait", "5"], capture_output=True, text=True, timeout=DEADLINE_S)


def test_a_user_denied_the_takeover_script_s_claim_is_refused_at_start_naming_it(
        tmp_path: Path, redis_url: str, admin: redis.Redis) -> None:
    """``XAUTOCLAIM`` is sent only inside the takeover script, the day a standby takes the lease of a
    publisher that died: such a publisher started, stood by, and failed then — the channel's levels no
    longer reaching the destination. Refused at start (exit 2), nothing made in Redis."""
    done = run_publisher(tmp_path, as_user(admin, redis_url, "~*", "+@all", "-xautoclaim"))
    assert done.returncode == 2, done.stderr
    assert "XAUTOCLAIM on atp:{avail}:web: the takeover of pending entries" in done.stderr, done.stderr
    assert "--redis-url: the Redis user may not run commands the publisher sends" in done.stderr
    assert "Traceback" not in done.stderr
    assert admin.dbsize() == 0, admin.keys()  # refused before its first call: no group, no lease


async def test_each_key_denied_is_named_with_what_it_is_for(redis_url: str, admin: redis.Redis) -> None:
    """Key patterns that leave the dead letters and the keys owed a redelivery out: each command on
    them named, and the script whose keys include one."""
    cfg = PublisherConfig(channel="web")
    url = as_user(admin, redis_url, "+@all", f"~{cfg.stream}", f"~{cfg.lease_key}", f"~{cfg.delivered_key}",
                  f"~{cfg.state_key}", f"~{cfg.redeliver_all_key}", f"~{cfg.restamp_key}")
    with pytest.raises(AclRefused) as refused:
        await check_publisher_acl(cfg, url, cluster=False)
    said = str(refused.value)
    assert f"XADD on {cfg.dead_letter_stream}: dead letters" in said, said
    for command in ("HLEN", "HSET", "HSCAN", "HDEL"):
        assert f"{command} on {cfg.redeliver_key}:" in said, said
    assert f"EVAL on {cfg.lease_key}, {cfg.redeliver_key}: the forget script" in said
    letters = f"{cfg.lease_key}, {cfg.dead_letter_stream}, {cfg.redeliver_key}, {cfg.redeliver_all_key}"
    assert f"EVAL on {letters}: the dead letters script" in said, said
    assert "the settle script" not in said and "the takeover script" not in said  # their keys are granted
    named = said.replace(letters, "").replace(cfg.dead_letter_stream, "").replace(cfg.redeliver_key, "")
    named = named.replace(f"{cfg.lease_key}, ", "")
    assert cfg.stream + ":" not in named, said  # no granted key named alone


def test_a_user_granted_the_publisher_s_keys_alone_starts_and_delivers(
        tmp_path: Path, redis_url: str, admin: redis.Redis) -> None:
    """What is asked is what a publisher sends, on its keys only: a user of the least ACL
    docs/OPERATIONS.md gives (the channel feeds' hash tag) passes the check and takes the lease."""
    cfg = PublisherConfig(channel="web", group="jsonl")  # the group a jsonl adapter's publisher is in by default
    documented = re.search(r"`ACL SETUSER atp-publisher on >PASSWORD ([^`]+)`", OPERATIONS.read_text())
    assert documented, "docs/OPERATIONS.md gives a publisher's least ACL"
    url = as_user(admin, redis_url, *documented.group(1).split())
    proc = subprocess.Popen([sys.executable, "-m", "publishers.cli", "--channel", "web", "--adapter", "jsonl",
                             "--file", str(tmp_path / "web.jsonl"), "--redis-url", url, "--metrics-port", "-1"],
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "publisher.log").open("wb"))
    try:
        log, delivered = tmp_path / "publisher.log", tmp_path / "web.jsonl"
        update = ChannelUpdate("web", "sku-1", "", 4, None, StockStatus.IN_STOCK, 1, 1000, 0, 2000)
        admin.xadd(cfg.stream, to_fields(update), id="1-0")  # type: ignore[arg-type]
        for _ in range(int(DEADLINE_S * 20)):
            if admin.hlen(cfg.delivered_key) or proc.poll() is not None:  # settled: its version recorded
                break
            time.sleep(0.05)
        assert proc.poll() is None and admin.exists(cfg.lease_key), log.read_text()
        assert list(admin.hvals(cfg.delivered_key)) == [b"1"] and '"sku-1"' in delivered.read_text()
    finally:
        proc.terminate()
        assert proc.wait(DEADLINE_S) == 0, (tmp_path / "publisher.log").read_text()


def test_each_command_asked_is_sent_and_each_script_command_is_asked() -> None:
    """A command asked that the publisher never sends refuses a user for nothing; a command its
    scripts send that is not asked fails the day it is first sent."""
    sources = {path.name: path.read_text() for path in PACKAGE.glob("*.py")}
    sent = "\n".join(text for name, text in sources.items() if name != "_permissions.py")
    asked = {need.args[0] if need.args[0] not in ("XGROUP", "XINFO") else " ".join(map(str, need.args[:2]))
             for need in publisher_needs(PublisherConfig(channel="web"))}
    for command in {a.split()[0] for a in asked}:
        assert re.search(rf"['\"]{command}['\"]|\.{command.lower()}(_\w+)?\(", sent, re.IGNORECASE), command
    in_scripts = {" ".join(m).strip().upper() for m in re.findall(r"redis\.call\('(\w+)'(?:, '(\w+)')?", sent)}
    for command in in_scripts:
        assert command in asked or command.split()[0] in asked, f"{command} (a script's) is not asked"
    assert in_scripts >= {"XAUTOCLAIM", "XACK", "HSET", "XGROUP DELCONSUMER"}, in_scripts


async def test_a_user_denied_the_stream_s_info_is_refused(redis_url: str, admin: redis.Redis) -> None:
    """``XINFO STREAM`` tells, before each read of new entries, whether the stream's trimming removed
    entries this group never read (their keys then resynced): a user denied it failed at the first
    such look, after it took the lease, retrying as if Redis were away."""
    cfg = PublisherConfig(channel="web")
    with pytest.raises(AclRefused) as refused:
        await check_publisher_acl(cfg, as_user(admin, redis_url, "~*", "+@all", "-xinfo|stream"), cluster=False)
    assert f"XINFO STREAM on {cfg.stream}:" in str(refused.value), refused.value


async def test_a_user_denied_the_range_read_of_a_standby_s_look_is_refused(redis_url: str, admin: redis.Redis) -> None:
    """``XRANGE`` is sent only by a publisher standing by that delivered before (its look for a start of the service
    after Redis lost data, ``_standby``): a user denied it failed each look, naming nothing of what it delivered."""
    cfg = PublisherConfig(channel="web")
    with pytest.raises(AclRefused) as refused:
        await check_publisher_acl(cfg, as_user(admin, redis_url, "~*", "+@all", "-xrange"), cluster=False)
    assert f"XRANGE on {cfg.stream}: a standby's look" in str(refused.value), refused.value


SENT_BY = {"pipeline": "MULTI", "execute": "EXEC", "hscan_iter": "HSCAN", "xgroup_create": "XGROUP CREATE",
           "xinfo_groups": "XINFO GROUPS", "xinfo_consumers": "XINFO CONSUMERS", "xinfo_stream": "XINFO STREAM"}
"""What a redis-py method sends, where its name does not say it (the rest: the name in capitals)."""
HELPERS = {"make_group": {"XGROUP CREATE"}, "stream_info": {"XINFO STREAM"},
           "refuse_evicting_redis": set(), "node_configs": set(), "Nodes": {"EVALSHA", "SCRIPT LOAD"},
           "HashScan": {"HSCAN"},
           **{name: set[str]() for name in ("Lease", "Holding", "Publisher", "Takeover", "Redelivery")}}
"""What a helper given the publisher's client sends (``CONFIG GET``: not asked, its refusal is a
warning; the package's own classes: their calls are scanned here)."""
NOT_ASKED = {"MULTI", "EXEC", "ACLOSE"}  # MULTI/EXEC: asked on their own, not inside the transaction


def test_each_direct_call_of_the_redis_client_is_asked() -> None:
    """A Redis command sent through the client (or a pipeline of it, or a storage helper given it)
    that is not asked is one a user may be denied after its start: a new call must be asked."""
    asked = {need.command for need in publisher_needs(PublisherConfig(channel="web"))}
    sent: set[str] = set()
    for path in PACKAGE.glob("*.py"):
        if path.name in ("_permissions.py", "_http.py"):  # _http.py: its client is an HTTP one
            continue
        text = path.read_text()
        for method in re.findall(r"\b(?:client|pipe)\.(\w+)\(", text):
            sent.add(SENT_BY.get(method, method.upper()))
        for helper in re.findall(r"\b(\w+)\((?:self\.)?client\b", text):
            assert helper in HELPERS, f"{path.name}: {helper}(client) — say what it sends in HELPERS"
            sent |= HELPERS[helper]
    assert {"XREADGROUP", "XINFO STREAM", "HSCAN", "EVAL", "SET"} <= sent, sent  # the scan finds the calls
    assert sent - NOT_ASKED <= asked, sorted(sent - NOT_ASKED - asked)
    waiting = {need.command for need in publisher_needs(PublisherConfig(channel="web", wait_replicas=1))}
    assert "WAIT" in waiting - asked, "WAIT (Nodes, after the renewal) asked only with --wait-replicas"


def documented_acl() -> list[str]:
    """The rules of the least ACL docs/OPERATIONS.md gives a publisher's user."""
    documented = re.search(r"`ACL SETUSER atp-publisher on >PASSWORD ([^`]+)`", OPERATIONS.read_text())
    assert documented, "docs/OPERATIONS.md gives a publisher's least ACL"
    return documented.group(1).split()


async def test_on_a_cluster_the_slot_map_and_command_table_are_asked(
        redis_cluster: EmbeddedCluster, cluster_url: str) -> None:
    """With --redis-cluster, redis-py's cluster client reads the slot map (``CLUSTER SLOTS``) and the
    command table (``COMMAND``) before any command: a user denied them was taken for a Redis not up
    (waiting, then exit 3, "Cluster mode is not enabled"), not refused naming them. The documented
    least ACL grants them and passes on every primary."""
    url = cluster_url.replace("redis://", f"redis://{USER}:{PASSWORD}@", 1)
    cfg, rules = PublisherConfig(channel="web"), documented_acl()
    try:
        for node in redis_cluster.nodes:
            with redis.Redis(port=node.port) as client:
                client.execute_command("ACL", "SETUSER", USER, "reset", "on", f">{PASSWORD}", *rules,
                                       "-cluster|slots", "-command")
        with pytest.raises(AclRefused) as refused:
            await check_publisher_acl(cfg, url, cluster=True)
        assert "CLUSTER SLOTS: " in str(refused.value) and "COMMAND: " in str(refused.value), refused.value
        for node in redis_cluster.nodes:
            with redis.Redis(port=node.port) as client:
                client.execute_command("ACL", "SETUSER", USER, "reset", "on", f">{PASSWORD}", *rules)
        await check_publisher_acl(cfg, url, cluster=True)
    finally:
        for node in redis_cluster.nodes:
            with redis.Redis(port=node.port) as client:
                client.execute_command("ACL", "DELUSER", USER)


async def test_a_user_denied_the_dead_letters_script_s_commands_is_refused(redis_url: str, admin: redis.Redis) -> None:
    """Dead letters and the keys they leave owed are one script under the lease (no ``MULTI``/``EXEC``
    of the publisher's own): what it sends inside is asked, each on its key."""
    cfg = PublisherConfig(channel="web")
    url = as_user(admin, redis_url, "~*", "+@all", "-exec", "-hlen")
    with pytest.raises(AclRefused) as refused:
        await check_publisher_acl(cfg, url, cluster=False)
    assert f"HLEN on {cfg.redeliver_key}:" in str(refused.value) and "EXEC" not in str(refused.value), refused.value


async def test_a_user_denied_discard_alone_is_warned_of_not_refused(
        redis_url: str, admin: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    """The publisher never sends ``DISCARD``: a user denied it alone is not refused for it (nothing
    can be asked without it: a warning says so)."""
    with caplog.at_level(logging.WARNING, logger="atp_service.storage.acl"):
        await check_publisher_acl(PublisherConfig(channel="web"), as_user(admin, redis_url, "~*", "+@all", "-discard"),
                                  cluster=False)
    assert any("may not run MULTI or DISCARD" in r.getMessage() for r in caplog.records)
