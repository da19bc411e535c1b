"""The write lane (``storage/lane.py``) against a real redis-server: each test is a fault the lane
must survive without ever reading one call's reply as another's, and without a write failing that
a plain retry-free client would have sent on a live connection."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import redis
from redis._parsers.encoders import Encoder
from redis.connection import PythonRespSerializer
from redis.exceptions import (
    AskError,
    ClusterDownError,
    DataError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.storage.embedded_redis import EmbeddedRedis
from atp_service.storage.lane import LANE_CONNECTIONS, Lane, pack
from atp_service.storage.nodes import Call, Nodes, NotReplicated, Script, connect, open_nodes
from atp_service.storage.wire import Wire
from tests.waiting import until

ECHO = Script("redis.call('INCR', KEYS[1]) return ARGV[1]")
"""Counts its runs in its key, answers its own argument: a reply read for the wrong call shows."""
SLOW_ECHO = Script("""
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat local n = redis.call('TIME') until n[1] * 1000000 + n[2] - start >= tonumber(ARGV[2])
redis.call('INCR', KEYS[1])
return ARGV[1]""")
"""ECHO after a busy wait of ARGV[2] µs: Redis answers nothing else meanwhile."""
REFUSED = Script("return redis.error_reply('FENCED epoch 1 was replaced by 2')")
SHAPES = Script("return {1, 'a', {2, false, 'b'}, redis.status_reply('OK'), -7}")


def echo(arg: str, key: str = "n") -> Call:
    return Call(ECHO, [key], [arg])


def lane_of(nodes: Nodes) -> Lane:
    """The single Redis's lane (made on first use)."""
    return nodes._lane("")


def kill_normal_clients(port: int) -> int:
    with redis.Redis(host="127.0.0.1", port=port) as admin:
        return int(admin.client_kill_filter(_type="normal", skipme=True))


async def test_a_write_after_a_redis_restart_goes_on_a_fresh_connection(own_redis: EmbeddedRedis) -> None:
    """The lane's idle connection died with the server; the write after the restart must not be
    sent on it (and the scripts the restart forgot are loaded again)."""
    nodes = Nodes(connect(own_redis.url, 5.0))
    try:
        assert await nodes.run([echo("before")]) == [b"before"]
        await asyncio.to_thread(own_redis.stop)
        await asyncio.to_thread(own_redis.start)
        assert await nodes.run([echo("after")]) == [b"after"]
        assert lane_of(nodes).open_connections == 1
    finally:
        await nodes.aclose()


async def test_a_write_after_client_kill_of_the_lanes_connections_succeeds(redis_url: str) -> None:
    nodes = Nodes(connect(redis_url, 5.0))
    try:
        await asyncio.gather(*(nodes.run([echo(f"warm-{i}")]) for i in range(4)))  # several idle connections
        assert kill_normal_clients(nodes.reader.connection_pool.connection_kwargs["port"]) >= 1
        await asyncio.sleep(0.05)  # the lane's connections were closed a moment ago, not this instant
        assert await nodes.run([echo("one"), echo("two")]) == [b"one", b"two"]
        assert await asyncio.gather(*(nodes.run([echo(f"c{i}")]) for i in range(4))) == \
            [[f"c{i}".encode()] for i in range(4)]
    finally:
        await nodes.aclose()


async def test_a_timed_out_exchange_leaves_its_late_reply_unread(own_redis: EmbeddedRedis) -> None:
    """Redis paused past the timeout: the write fails as a timeout (in doubt), and once Redis runs
    again the next write gets its own reply, never the late one of the write that timed out."""
    # 0.5 s for the write Redis is paused under only: the writes and the read around it have a bound, not a
    # pace (at 0.5 s each, a loaded host's Redis answering one late failed the test as a timeout).
    nodes = Nodes(connect(own_redis.url, 30.0))
    assert own_redis.process is not None
    pid = own_redis.process.pid
    try:
        assert await nodes.run([echo("warm")]) == [b"warm"]
        lane_of(nodes).timeout_s = 0.5
        os.kill(pid, signal.SIGSTOP)
        try:
            (late,) = await nodes.run([echo("late")])
        finally:
            os.kill(pid, signal.SIGCONT)
        lane_of(nodes).timeout_s = 30.0
        assert isinstance(late, RedisTimeoutError)
        assert await nodes.run([echo("mine")]) == [b"mine"]
        assert int(await nodes.reader.get("n")) == 3  # the late write did land: in doubt, not lost
    finally:
        await nodes.aclose()


async def test_a_caller_cancelled_mid_exchange_leaves_the_next_write_correct(own_redis: EmbeddedRedis) -> None:
    """Redis paused with the write sent: its reply comes after the cancellation, whatever the host's pace (a
    300 ms script and a 0.1 s sleep let a process stalled for 0.2 s read the reply before it cancelled)."""
    nodes = Nodes(connect(own_redis.url, 5.0))
    assert own_redis.process is not None
    pid = own_redis.process.pid
    try:
        assert await nodes.run([echo("warm")]) == [b"warm"]
        os.kill(pid, signal.SIGSTOP)
        try:
            stuck = asyncio.create_task(nodes.run([echo("late")]))
            await until(lambda: lane_of(nodes)._busy == 1, "the write sent on the warm connection")
            stuck.cancel()
            with pytest.raises(asyncio.CancelledError):
                await stuck
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await nodes.run([echo("mine")]) == [b"mine"]
        assert await nodes.run([echo("again"), echo("too")]) == [b"again", b"too"]
    finally:
        await nodes.aclose()


async def test_a_caller_cancelled_while_connecting_leaves_no_half_made_connection(own_redis: EmbeddedRedis) -> None:
    """Redis paused: a new connection is accepted by the kernel but its handshake gets no answer.
    The caller cancelled there, the half-made connection must not serve the next write."""
    # A bound far past the test's own steps: with 5 s, a host loaded enough to starve the loop that long let the
    # handshake time out before the cancel (the call over, nothing cancelled: "DID NOT RAISE"). Nothing waits it out.
    nodes = Nodes(connect(own_redis.url, 120.0))
    assert own_redis.process is not None
    pid = own_redis.process.pid
    try:
        os.kill(pid, signal.SIGSTOP)
        try:
            connecting = asyncio.create_task(nodes.run([echo("never")]))
            # Seen, not slept on: after a sleep, a slow host's call had not begun connecting (nothing tested).
            await until(lambda: any(conn.is_connected for conn in lane_of(nodes)._open),
                        "the connection made, its handshake unanswered")
            connecting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await connecting
        finally:
            os.kill(pid, signal.SIGCONT)
        assert lane_of(nodes).open_connections == 0
        assert await nodes.run([echo("mine")]) == [b"mine"]
        assert int(await nodes.reader.get("n")) == 1  # the cancelled call never reached Redis
    finally:
        await nodes.aclose()


async def test_noscript_reloads_and_resends_only_the_calls_that_did_not_run(redis_url: str) -> None:
    other = Script("redis.call('INCR', KEYS[1]) return 'other' -- another digest")
    nodes = Nodes(connect(redis_url, 5.0))
    try:
        assert await nodes.run([echo("warm")]) == [b"warm"]  # the lane has a connection, the node the script
        await nodes.reader.script_flush()
        await nodes.reader.script_load(other.body)  # the node knows one of the two scripts
        replies = await nodes.run([Call(other, ["n"], []), echo("sent again"), Call(other, ["n"], [])])
        assert replies == [b"other", b"sent again", b"other"]
        assert int(await nodes.reader.get("n")) == 4  # warm + three calls, each run once
        assert lane_of(nodes).open_connections == 1  # the reload went on the lane too
    finally:
        await nodes.aclose()


async def test_many_concurrent_runs_each_get_their_own_replies_on_a_bounded_lane(redis_url: str) -> None:
    nodes = Nodes(connect(redis_url, 5.0))
    try:
        runs = [[echo(f"{i}-a"), Call(SLOW_ECHO, ["n"], [f"{i}-b", 200]), echo(f"{i}-c")] for i in range(200)]
        replies = await asyncio.gather(*(nodes.run(calls) for calls in runs))
        assert replies == [[f"{i}-{x}".encode() for x in "abc"] for i in range(200)]
        assert 1 <= lane_of(nodes).open_connections <= LANE_CONNECTIONS
        assert int(await nodes.reader.get("n")) == 600
    finally:
        await nodes.aclose()


async def test_a_lane_whose_connections_are_busy_makes_the_next_exchange_wait_at_most_its_timeout(
        redis_url: str) -> None:
    client = connect(redis_url, 5.0)
    lane = Lane(client.connection_pool, connections=1)
    try:
        lane.timeout_s = None
        blocked = asyncio.create_task(lane.exchange([("BLPOP", "q", 0)]))  # holds the one connection
        await asyncio.sleep(0.1)
        lane.timeout_s = 0.3
        with pytest.raises(RedisTimeoutError, match="busy"):
            await lane.exchange([("INCR", "n")])
        assert await client.get("n") is None  # the waiting exchange never reached Redis
        lane.timeout_s = 30.0  # a bound, not a pace: this one must wait for the turn, however slow the host
        waiting = asyncio.create_task(lane.exchange([("INCR", "n")]))  # waits, then goes
        await asyncio.sleep(0.05)
        await client.rpush("q", "x")
        assert await blocked == [[b"q", b"x"]]
        assert await waiting == [1]
        assert lane.open_connections == 1
    finally:
        await lane.aclose()
        await client.aclose()


async def test_each_exchange_is_held_to_its_own_deadline_not_to_an_earlier_ones(redis_url: str) -> None:
    """A connection keeps one watchdog timer for the deadlines of its exchanges (``wire.py``): the
    wake-up an earlier exchange set neither times a later one out at the earlier deadline nor lets
    a later one with a shorter deadline run past its own."""
    client = connect(redis_url, 5.0)
    lane = Lane(client.connection_pool, connections=1)
    try:
        lane.timeout_s = 3.0
        assert await lane.exchange([("INCR", "n")]) == [1]  # the watchdog wakes 3 s from now
        await asyncio.sleep(2.0)
        # Ends about 3.5 s after the first exchange began: past its deadline, well inside its own.
        assert await lane.exchange([("BLPOP", "q", 1.5)]) == [None]
    finally:
        await lane.aclose()
    lane = Lane(client.connection_pool, connections=1)  # a new connection: no watchdog yet
    try:
        lane.timeout_s = 0.3
        assert await lane.exchange([("INCR", "n")], extra_s=60.0) == [2]  # the watchdog: a minute ahead
        with pytest.raises(RedisTimeoutError, match="Timeout reading"):
            await lane.exchange([("BLPOP", "q", 5)])  # held to its own 0.3 s, not to the minute
        assert lane.open_connections == 0  # the connection that timed out is closed
        lane.timeout_s = 30.0  # a bound, not a pace: a new connection and an INCR, however slow the host
        assert await lane.exchange([("INCR", "n")]) == [3]
    finally:
        await lane.aclose()
        await client.aclose()


async def test_replies_are_what_redis_py_gave_and_error_replies_are_the_calls_own(redis_url: str) -> None:
    nodes = Nodes(connect(redis_url, 5.0))
    try:
        expected = await nodes.reader.eval(SHAPES.body, 0)
        replies = await nodes.run([Call(SHAPES, [], []), Call(REFUSED, ["k"], []), echo("fine")])
        assert replies[0] == expected == [1, b"a", [2, None, b"b"], b"OK", -7]
        assert type(replies[1]) is ResponseError and str(replies[1]).startswith("FENCED")
        assert replies[2] == b"fine"
        with pytest.raises(ResponseError, match="FENCED"):
            await nodes.run_one(Call(REFUSED, ["k"], []))
    finally:
        await nodes.aclose()


async def test_wait_for_replicas_that_are_not_there_is_not_replicated(redis_url: str) -> None:
    nodes = open_nodes(redis_url, 5.0, wait_replicas=1, wait_timeout_ms=20)
    try:
        replies = await nodes.run([echo("landed"), Call(REFUSED, ["k"], [])])
        assert isinstance(replies[0], NotReplicated)
        assert isinstance(replies[1], ResponseError) and not isinstance(replies[1], NotReplicated)
    finally:
        await nodes.aclose()


async def test_a_node_that_is_down_fails_every_call_then_serves_again(own_redis: EmbeddedRedis) -> None:
    nodes = Nodes(connect(own_redis.url, 5.0))
    try:
        assert await nodes.run([echo("up")]) == [b"up"]
        await asyncio.to_thread(own_redis.stop)
        down = await nodes.run([echo("a"), echo("b")])
        assert all(isinstance(r, RedisConnectionError) for r in down) and down[0] is down[1]
        await asyncio.to_thread(own_redis.start)
        assert await nodes.run([echo("back")]) == [b"back"]
    finally:
        await nodes.aclose()


async def test_aclose_closes_the_lanes_connections(redis_url: str) -> None:
    nodes = Nodes(connect(redis_url, 5.0))
    await asyncio.gather(*(nodes.run([Call(SLOW_ECHO, ["n"], [str(i), 1000])]) for i in range(3)))
    lane = lane_of(nodes)
    assert lane.open_connections >= 1
    with redis.Redis.from_url(redis_url) as admin:
        before = len(admin.client_list(_type="normal"))
        await nodes.aclose()
        assert lane.open_connections == 0
        # Redis drops a client once it reads the close: waited for (a busy host's redis-server ran late of 50 ms).
        await until(lambda: len(admin.client_list(_type="normal")) <= before - 1, "Redis saw the connections closed")


async def test_cluster_writes_after_client_kill_on_every_primary(cluster_url: str,
                                                                 redis_cluster: EmbeddedCluster) -> None:
    nodes = open_nodes(cluster_url, 5.0, cluster=True)
    calls = [echo(f"g{g}", key=f"t:{{g{g}}}:n") for g in range(12)]  # twelve groups over the primaries
    try:
        assert await nodes.run(calls) == [f"g{g}".encode() for g in range(12)]
        assert len(nodes._lanes) == len(redis_cluster.primaries)
        for node in redis_cluster.serving_primaries():
            kill_normal_clients(node.port)
        # Each idle connection has read its close before the next run (a busy host's loop ran late of 50 ms).
        await until(lambda: all(wire.closed for lane in nodes._lanes.values() for wire in lane._idle),
                    "the idle connections read their kill")
        assert await nodes.run(calls) == [f"g{g}".encode() for g in range(12)]
        assert not nodes._suspect
    finally:
        await nodes.aclose()


async def test_redis_py_still_holds_the_stream_writer_the_lane_takes_over(redis_url: str) -> None:
    """The lane relies on redis-py private state: after ``connect()`` a connection's ``_writer`` is
    the StreamWriter of its socket, whose transport can change protocol; and error replies are made
    by redis-py's own mapping. A redis-py upgrade that changes either fails here, by name."""
    client = connect(redis_url, 5.0)
    conn = client.connection_pool.make_connection()
    try:
        await conn.connect()
        writer = getattr(conn, "_writer", None)
        assert isinstance(writer, asyncio.StreamWriter), "redis-py no longer keeps its StreamWriter in _writer"
        assert callable(getattr(writer.transport, "set_protocol", None))
        wire = Wire.take_over(conn)
        for line, kind in [(b"-NOSCRIPT No matching script.\r\n", NoScriptError),
                           (b"-MOVED 3999 127.0.0.1:6381\r\n", MovedError), (b"-ASK 3999 127.0.0.1:6381\r\n", AskError),
                           (b"-TRYAGAIN Multiple keys\r\n", TryAgainError),
                           (b"-CLUSTERDOWN down\r\n", ClusterDownError),
                           (b"-FENCED epoch 1\r\n", ResponseError)]:
            wire._reader.feed(line)
            assert type(wire._reader.gets()) is kind
    finally:
        await conn.disconnect()
        await client.aclose()


async def test_a_reply_no_exchange_waits_for_closes_the_idle_connection(redis_url: str) -> None:
    """Bytes on an idle connection (here a PING written behind the lane's back) are not the answer
    to the next exchange: the connection is closed, and the next exchange gets its own reply."""
    nodes = Nodes(connect(redis_url, 5.0))
    try:
        assert await nodes.run([echo("warm")]) == [b"warm"]
        (wire,) = lane_of(nodes)._idle
        wire.transport.write(b"*1\r\n$4\r\nPING\r\n")
        for _ in range(2000):  # Redis's answer to come and be noticed: 20 s, a bound, not a timing
            if wire.closed:
                break
            await asyncio.sleep(0.01)
        assert wire.closed
        assert await nodes.run([echo("mine")]) == [b"mine"]
        assert lane_of(nodes).open_connections == 1
    finally:
        await nodes.aclose()


async def test_a_reply_in_many_segments_is_read_whole(redis_url: str) -> None:
    """A reply of 3 MB arrives in many reads; each of the exchange's replies is whole, in order."""
    big = Script("return string.rep(ARGV[1], tonumber(ARGV[2]))")
    nodes = Nodes(connect(redis_url, 5.0))
    try:
        replies = await nodes.run([Call(big, [], ["ab", 1_500_000]), echo("after"), Call(SHAPES, [], [])])
        assert replies == [b"ab" * 1_500_000, b"after", [1, b"a", [2, None, b"b"], b"OK", -7]]
        wire = lane_of(nodes)._idle[0]
        assert _fed_bytewise(wire, 2, b"*2\r\n$3\r\nabc\r\n:7\r\n$-1\r\n") == [[b"abc", 7], None]
    finally:
        await nodes.aclose()


def _fed_bytewise(wire: Wire, count: int, data: bytes) -> list[Any]:
    """The ``count`` replies ``wire`` assembles from ``data`` handed to it one byte at a time."""
    got: list[Any] = []
    wire.expect(count, got.append)
    for i in range(len(data)):
        assert not got
        wire.data_received(data[i:i + 1])
    (replies,) = got  # handed over once, when the last byte came
    assert isinstance(replies, list)
    return replies


async def test_an_exchange_of_no_commands_answers_at_once(redis_url: str) -> None:
    """A lease renewal of no group sends no command: waiting for a reply would stall it for the
    whole timeout (60 s here)."""
    nodes = Nodes(connect(redis_url, 60.0))
    try:
        assert await asyncio.wait_for(nodes.run([]), 30) == []
        assert lane_of(nodes).open_connections == 0
    finally:
        await nodes.aclose()


async def test_a_wait_for_replicas_has_its_own_timeout_on_top_of_the_exchanges(redis_url: str) -> None:
    """``WAIT`` may take its whole timeout on the server: the exchange's deadline leaves it that
    long beyond the socket timeout, so a short wait ends ``NotReplicated``, not timed out. The socket timeout
    is the margin between WAIT's answer and that deadline: a process stalled past it finds both due in one
    pass of the event loop and the deadline runs first (the write then in doubt, settled: R7)."""
    nodes = open_nodes(redis_url, 1.5, wait_replicas=1, wait_timeout_ms=3000)
    try:
        (reply,) = await nodes.run([echo("landed")])
        assert isinstance(reply, NotReplicated), reply
    finally:
        await nodes.aclose()


async def test_a_connection_made_after_aclose_is_closed_not_kept(redis_url: str) -> None:
    nodes = Nodes(connect(redis_url, 5.0))
    lane = lane_of(nodes)
    exchange = asyncio.ensure_future(lane.exchange([("PING",)]))
    await asyncio.sleep(0)  # connecting
    await lane.aclose()
    with pytest.raises(RedisConnectionError):
        await exchange
    assert lane.open_connections == 0
    await nodes.aclose()


def test_a_client_that_decodes_replies_cannot_write() -> None:
    """The log tells a script's refusal by its first byte: a decoded reply would read as success."""
    client = connect("redis://127.0.0.1:1/0?decode_responses=True", 1.0)
    with pytest.raises(ValueError, match="decode_responses"):
        Lane(client.connection_pool)


def test_a_client_with_another_encoding_cannot_write() -> None:
    """The lane sends str arguments (the keys) as UTF-8: a client reading them in another encoding
    would name other keys."""
    client = connect("redis://127.0.0.1:1/0?encoding=latin-1", 1.0)
    with pytest.raises(ValueError, match="UTF-8"):
        Lane(client.connection_pool)
    with pytest.raises(ValueError, match="redis_url: the service's writes need the UTF-8"):  # at start, not at a write
        open_nodes("redis://127.0.0.1:1/0?encoding=latin-1", 1.0)
    open_nodes("redis://127.0.0.1:1/0?encoding=utf_8", 1.0)  # another spelling of UTF-8 is fine


def test_commands_are_packed_as_redis_py_packs_them() -> None:
    commands = [("EVALSHA", "a" * 40, 2, "atp:{g1}:log", "clé", 7, -3, 1.5, b"\x00\xffdata"),
                ("SCRIPT", "LOAD", "return 1"), ["WAIT", 1, 1000]]
    reference = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)  # redis-py's, in Python
    assert pack(commands) == b"".join(b"".join(reference.pack(*command)) for command in commands)
    with pytest.raises(DataError, match="cannot be sent"):
        pack([("SET", "k", None)])


async def test_a_command_that_cannot_be_packed_fails_alone_and_the_lane_writes_on(redis_url: str) -> None:
    nodes = open_nodes(redis_url, 2.0)
    refused = await nodes.run([Call(ECHO, ["k"], [None])])
    assert isinstance(refused[0], DataError)
    assert await nodes.run([Call(ECHO, ["k"], ["v"])]) == [b"v"]
    await nodes.aclose()


async def test_writes_follow_an_address_that_moved_to_the_promoted_replica(tmp_path: Path) -> None:
    """A failover behind one address (a managed Redis's name, a proxy): from then on new connections
    reach the promoted replica, but those already open still reach the old primary, now a replica,
    which refuses every write READONLY. Kept, they refused every write for good, so a shard in doubt
    never settled and never answered again. A READONLY drops them — the lane's, and the pooled ones
    of the client it was made from (the reads that settle a write must see where it goes) — so the
    next connection reaches the new primary."""
    from tests.atp_service.redis_proxy import HoldingProxy

    primary = EmbeddedRedis(tmp_path / "p", extra_args=["--repl-diskless-sync-delay", "0"]).start()
    replica = EmbeddedRedis(tmp_path / "r", extra_args=["--replicaof", "127.0.0.1", str(primary.port)]).start()
    proxy = HoldingProxy("127.0.0.1", primary.port)
    url = await proxy.start()
    nodes, other = Nodes(connect(url, 5.0)), connect(url, 5.0)  # ``other``: as the ingestor's own client
    admin = redis.Redis(host="127.0.0.1", port=replica.port)
    try:
        await until(lambda: admin.info("replication")["master_link_status"] == "up", "the replica in sync")
        assert await nodes.run([echo("before")]) == [b"before"]
        assert await nodes.reader.get("n") == b"1" and await other.set("x", 1)
        with redis.Redis(host="127.0.0.1", port=primary.port) as old:
            old.execute_command("FAILOVER")  # to its one replica
        await until(lambda: admin.info("replication")["role"] == "master", "the replica promoted")
        proxy.port = replica.port  # the address reaches the promoted replica from now on
        (refused,) = await nodes.run([echo("in doubt")])  # on the connection kept: the old primary's
        assert isinstance(refused, ReadOnlyError)
        assert await nodes.run([echo("after")]) == [b"after"]
        assert (await nodes.reader.execute_command("ROLE"))[0] == b"master"
        with pytest.raises(ReadOnlyError):
            await other.set("x", 2)
        assert await other.set("x", 3)
    finally:
        admin.close()
        await nodes.aclose()
        await other.aclose()
        await proxy.close()
        for node in (primary, replica):
            node.kill()  # a stop waits out its shutdown-timeout here: nothing of them is read again
            node.stop()
