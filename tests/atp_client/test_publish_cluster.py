"""``atpctl events publish --redis-cluster`` to a Redis out of cluster mode: a bad command line (exit 2, publish
without --redis-cluster), known by what the node says of itself (``INFO cluster``: ``cluster_enabled:0``), not by the
words of its refusal of ``CLUSTER SLOTS``. (A real Redis Cluster taking the facts: tests/atp_service/app/
test_cluster_mode.py; one Redis told apart from a user denied ``CLUSTER SLOTS``: test_publish.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from atp_service.storage.embedded_redis import EmbeddedRedis
from tests.atp_client.test_ctl import receipt
from tests.atp_client.test_publish import STREAM


def published(redis_url: str, facts: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "atp_client.ctl", "--json", "events", "publish", str(facts),
                           "--stream", STREAM, "--redis-url", redis_url, "--redis-cluster"],
                          capture_output=True, text=True, timeout=60)


def assert_told_to_publish_without_redis_cluster(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 2 and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    assert "without --redis-cluster" in done.stderr, done.stderr
    assert json.loads(done.stdout) == {"stream": STREAM, "published": 0, "in_doubt": 0}, done.stdout


def test_a_redis_whose_cluster_command_is_renamed_is_told_no_cluster_not_retry_later(tmp_path: Path) -> None:
    """``rename-command CLUSTER ""`` (or a proxy without it): Redis answers ``CLUSTER SLOTS`` "unknown command", not
    "cluster support disabled", and that refusal's text was what told one Redis from a cluster: exit 6, "again once
    Redis takes writes", and a script retrying on 6 looped for ever, where no retry changes it."""
    facts = tmp_path / "facts.jsonl"
    facts.write_text(receipt(0, int(time.time() * 1000)) + "\n")
    server = EmbeddedRedis(tmp_path / "redis", extra_args=["--rename-command", "CLUSTER", ""]).start()
    try:
        done = published(server.url, facts)
    finally:
        server.stop()
    assert_told_to_publish_without_redis_cluster(done)


def test_a_user_that_may_not_run_info_is_told_no_cluster_by_the_refusal_s_kind(redis_url: str, tmp_path: Path) -> None:
    """``INFO`` is ``@dangerous``, which the documented ACLs take away: the node cannot be asked, and an ``ERR``
    refusal of ``CLUSTER SLOTS`` (no code of its own, as NOPERM or CLUSTERDOWN have) still reads as no cluster."""
    facts = tmp_path / "facts.jsonl"
    facts.write_text(receipt(0, int(time.time() * 1000)) + "\n")
    with redis.Redis.from_url(redis_url) as admin:
        admin.acl_setuser("publisher", enabled=True, passwords=["+pw"], commands=["+@all", "-@dangerous"], keys=["*"])
        try:
            done = published(redis_url.replace("redis://", "redis://publisher:pw@"), facts)
        finally:
            admin.acl_deluser("publisher")
    assert_told_to_publish_without_redis_cluster(done)


def _as_before_redis_py_7_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refusals as redis-py before 7.2 builds them (the client takes ``redis>=7.0``): no ``status_code``, a code it
    knows (ERR) cut from the text, one it does not (BUSY) left at its head."""
    from redis._parsers.base import BaseParser

    made = BaseParser.parse_error.__func__  # type: ignore[attr-defined]

    def parse_error(cls: type[BaseParser], response: str) -> Exception:
        error = made(cls, response)
        with contextlib.suppress(AttributeError):
            del error.status_code
        return error

    monkeypatch.setattr(BaseParser, "parse_error", classmethod(parse_error))


async def test_a_node_busy_with_a_script_is_retry_later_whatever_the_redis_py(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A node running a script past ``busy-reply-threshold`` refuses ``CLUSTER SLOTS`` and ``INFO`` alike ``BUSY``,
    a code redis-py names by no class: a refusal whose kind tells nothing, for a cluster's node as for one Redis, and
    that ends with the script: 6, retry later. Under redis-py before 7.2 (no ``status_code`` on a refusal) every
    such refusal read as an ERR: exit 2, "publish without --redis-cluster", to a Redis Cluster whose node was busy,
    where the words of the refusal had told 6 before (3065d00f)."""
    import redis.asyncio as aioredis

    from atp_client._output import EXIT_UNAVAILABLE
    from atp_client._publish import write

    _as_before_redis_py_7_2(monkeypatch)
    server = EmbeddedRedis(tmp_path / "redis", extra_args=["--busy-reply-threshold", "50"]).start()

    def loop() -> None:  # until SCRIPT KILL
        with redis.Redis.from_url(server.url) as busy, contextlib.suppress(redis.RedisError):
            busy.eval("while true do end", 0)

    looping = threading.Thread(target=loop, daemon=True)
    try:
        looping.start()
        with redis.Redis.from_url(server.url) as admin:
            deadline = time.monotonic() + 10
            while True:  # until the node answers BUSY
                try:
                    admin.get("k")
                except redis.ResponseError as exc:
                    if "BUSY" in str(exc):
                        break
                assert time.monotonic() < deadline, "the script never made the node busy"
                await asyncio.sleep(0.05)
            client = aioredis.RedisCluster.from_url(server.url)
            try:
                done = await write(client, STREAM, [(1, {"a": 1})], 10, 5.0)
            finally:
                await client.aclose()
            admin.script_kill()
    finally:
        looping.join(10)
        server.stop()
    assert done.not_sent and done.stopped_at == 1 and "BUSY" in done.error, done
    assert done.status == EXIT_UNAVAILABLE, done  # not EXIT_USAGE: a cluster's node, busy for now


@pytest.mark.parametrize("text", ["unknown command 'CLUSTER', with args beginning with: 'SLOTS' ",
                                  "This instance has cluster support disabled"])
def test_an_err_refusal_as_redis_py_before_7_2_built_it_still_reads_as_an_err(text: str) -> None:
    """redis-py before 7.2 cut ERR from the text and gave no ``status_code``: still no cluster where INFO is refused."""
    from redis.exceptions import ResponseError

    from atp_client._publish import _code

    refused = ResponseError(text)
    with contextlib.suppress(AttributeError):
        del refused.status_code
    assert _code(refused) == "ERR"
    assert _code(ResponseError("BUSY Redis is busy running a script.")) is None  # redis-py 7.2 on: no code it knows


class _OneChunkThenRefused:
    """A cluster client's pipeline: its first chunk taken, then its slots read again (a node lost meanwhile) refused
    ``CLUSTERDOWN``; ``cluster_client`` a cluster client whose node (``peer``) takes the connection and never answers,
    so that asking it ``INFO cluster`` waits out ``--timeout``."""

    def __init__(self, peer: socket.socket) -> None:
        from redis.asyncio.cluster import RedisCluster

        self.cluster_client = RedisCluster(host="127.0.0.1", port=peer.getsockname()[1])
        self.chunks = 0

    async def __aenter__(self) -> _OneChunkThenRefused:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    def pipeline(self, transaction: bool) -> _OneChunkThenRefused:
        return self

    def xadd(self, stream: str, fields: dict[str, object]) -> None:
        return None

    async def sent(self, pipe: object, done: Any) -> list[Any]:
        from redis.exceptions import ClusterDownError, RedisClusterException

        from atp_client._publish import _NotSent

        self.chunks += 1
        if self.chunks == 1:
            return [b"1-0", b"1-1"]
        done.not_sent = True
        try:
            raise ClusterDownError("The cluster is down")
        except ClusterDownError:
            try:  # redis-py's word for any refusal of CLUSTER SLOTS, the refusal its context
                raise RedisClusterException("Cluster mode is not enabled on this node")
            except RedisClusterException as exc:
                raise _NotSent from exc


async def test_a_ctrl_c_while_the_node_is_asked_whether_it_is_a_cluster_keeps_the_summary(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk's slots read refused (a node lost: CLUSTERDOWN), the node the URL names is asked ``INFO cluster``
    (3065d00f), which may wait up to --timeout: a Ctrl-C then ended the run without its summary (``atpctl:
    interrupted``, exit 130), what the stream took before untold, where OPERATIONS.md says a Ctrl-C ends it as a
    refusal does, with the summary: published, in doubt (none: the chunk was never sent)."""
    from atp_client import _publish

    with socket.create_server(("127.0.0.1", 0)) as peer:
        client = _OneChunkThenRefused(peer)
        monkeypatch.setattr(_publish, "_connected_then_sent", client.sent)
        run = asyncio.ensure_future(_publish.write(client, STREAM, [(n, {"a": n}) for n in range(1, 5)], 2, 30.0))
        peer.settimeout(10)
        connection, _ = await asyncio.to_thread(peer.accept)  # INFO cluster is being asked: no answer comes
        with connection:
            run.cancel()
            finished, _ = await asyncio.wait([run], timeout=10)
        await client.cluster_client.aclose()
    assert finished and not run.cancelled(), "the Ctrl-C ended the run without its summary"
    done = run.result()
    assert done.interrupted and (done.published, done.in_doubt, done.stopped_at) == (2, 0, 3), done
    assert done.not_sent, done


async def test_entries_of_a_node_whose_connection_is_lost_after_the_send_are_in_doubt_not_unpublished(
        cluster_url: str) -> None:
    """A cluster pipeline answers each command of a node whose connection drops after the chunk went out with the
    error itself (``ConnectionError``, not raised: ``raise_on_error=False``): those entries were counted neither
    published nor in doubt, the summary ``in_doubt`` 0 for a chunk whose answer was never read (R7). Deterministic:
    the stream's node holds the XADDs (``CLIENT PAUSE WRITE``) until the publisher's connection, seen waiting on one
    there, is killed."""
    import redis.asyncio as aioredis

    from atp_client._publish import write

    with redis.RedisCluster.from_url(cluster_url) as admin:
        port = admin.get_node_from_key(STREAM).port
    node = redis.Redis(host="127.0.0.1", port=port)
    client = aioredis.RedisCluster.from_url(cluster_url)
    try:
        node.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
        run = asyncio.ensure_future(write(client, STREAM, [(n, {"a": n}) for n in range(1, 6)], 10, 60.0))
        deadline = time.monotonic() + 30
        while not (waiting := [c for c in node.client_list() if c["cmd"] == "xadd" and "b" in c["flags"]]):
            assert time.monotonic() < deadline and not run.done(), "the chunk never reached the stream's node"
            await asyncio.sleep(0.02)
        node.client_kill_filter(_id=waiting[0]["id"])
        done = await run
    finally:
        node.execute_command("CLIENT", "UNPAUSE")
        node.close()
        await client.aclose()
    assert done.stopped_at == 1 and "Connection" in done.error, done
    assert (done.published, done.in_doubt) == (0, 5), done


def test_an_entry_whose_redirected_send_was_lost_stays_in_doubt_whatever_redis_py_s_retry_meets(
        redis_cluster: Any, cluster_url: str, moves: list[Any], tmp_path: Path) -> None:
    """A pipeline's ASK (MOVED, TRYAGAIN) answer is sent again alone through the cluster client, whose retries
    (three by default) sent it once more after its connection was lost: the entry's answer was then the last try's,
    a refusal (here the importing node out of memory) counted not written, in_doubt 0, though the lost try may have
    been written (R7; published again past the grace window, twice: E8). Deterministic: the importing node holds the
    XADD (``CLIENT PAUSE WRITE``), refuses writes from then on (``maxmemory``), and its connection is killed."""
    from tests.slot_moves import SlotMove

    facts = tmp_path / "facts.jsonl"
    facts.write_text(receipt(0, int(time.time() * 1000)) + "\n")
    with redis.RedisCluster.from_url(cluster_url) as admin:
        slot, source = admin.keyslot(STREAM), admin.get_node_from_key(STREAM).port
    target = next(node.port for node in redis_cluster.primaries if node.port != source)
    move = SlotMove(redis_cluster, slot, source, target)
    move.begin()  # the stream on no node: the source answers ASK, to the target
    moves.append(move)
    node = redis.Redis(host="127.0.0.1", port=target)
    run = None
    try:
        node.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
        run = subprocess.Popen([sys.executable, "-m", "atp_client.ctl", "--json", "--timeout", "30", "events",
                                "publish", str(facts), "--stream", STREAM, "--redis-url", cluster_url,
                                "--redis-cluster"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not (waiting := [c for c in node.client_list() if c["cmd"] == "xadd" and "b" in c["flags"]]):
            assert time.monotonic() < deadline and run.poll() is None, "the redirected XADD never reached the target"
            time.sleep(0.02)
        node.config_set("maxmemory", 1)
        node.client_kill_filter(_id=waiting[0]["id"])
        node.execute_command("CLIENT", "UNPAUSE")
        out, err = run.communicate(timeout=60)
    finally:
        node.execute_command("CLIENT", "UNPAUSE")
        node.config_set("maxmemory", 0)
        node.close()
        if run is not None and run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 6, (run.returncode, err)
    assert json.loads(out) == {"stream": STREAM, "published": 0, "in_doubt": 1}, (out, err)
