"""A write begun without a task (``Lane.begin``, ``Nodes.begin``): written before the call returns,
answered once from the connection's protocol, and every fault ends it as ``exchange`` would end."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.connection import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_service.storage.embedded_redis import EmbeddedRedis
from atp_service.storage.lane import Lane
from atp_service.storage.nodes import Call, Nodes, Script, connect
from tests.atp_service.storage.test_lane import echo, lane_of


class Handed:
    """A ``done`` callback that keeps what it is handed."""

    def __init__(self) -> None:
        self.results: list[Any] = []
        self._event = asyncio.Event()

    def __call__(self, result: Any) -> None:
        self.results.append(result)
        self._event.set()

    async def once(self, seconds: float = 5.0) -> Any:
        """What it was handed, once it was (exactly once)."""
        await asyncio.wait_for(self._event.wait(), seconds)
        await asyncio.sleep(0.01)  # a second hand-over would show
        (result,) = self.results
        return result


async def warm(nodes: Nodes) -> None:
    """One write through the task path: the lane keeps its connection idle afterwards."""
    assert await nodes.run([echo("warm")]) == [b"warm"]


@pytest.fixture
async def warmed(redis_url: str) -> AsyncIterator[Nodes]:
    """The writer of the test Redis, its lane holding one idle connection."""
    nodes = Nodes(connect(redis_url, 5.0))
    try:
        await warm(nodes)
        yield nodes
    finally:
        await nodes.aclose()


async def test_a_begun_write_goes_out_at_once_and_its_replies_are_handed_over_once(redis_url: str) -> None:
    nodes = Nodes(connect(redis_url, 5.0))
    try:
        got = Handed()
        assert not nodes.begin([echo("a")], got)  # no connection yet: nothing sent, the caller runs it
        assert not got.results
        await warm(nodes)
        lane = lane_of(nodes)
        assert nodes.begin([echo("b"), echo("c")], got)
        assert lane._busy == 1 and not lane._idle  # the connection is the write's until its replies are read
        assert await got.once() == [b"b", b"c"]
        assert lane._busy == 0 and len(lane._idle) == 1  # in step again: the next write may use it
        assert int(await nodes.reader.get("n")) == 3
        assert await nodes.run([echo("d")]) == [b"d"]
    finally:
        await nodes.aclose()


async def test_a_lane_with_every_turn_taken_does_not_begin(redis_url: str) -> None:
    client = connect(redis_url, 5.0)
    lane = Lane(client.connection_pool, connections=1)
    try:
        assert await lane.exchange([("PING",)]) == [b"PONG"]
        got = Handed()
        assert lane.begin([("INCR", "n")], got)
        assert not lane.begin([("INCR", "n")], got)  # the one turn is the first write's
        assert await got.once() == [1]
    finally:
        await lane.aclose()
        await client.aclose()


async def test_a_begun_write_that_times_out_is_in_doubt_and_its_late_reply_is_never_read(
        own_redis: EmbeddedRedis) -> None:
    # 0.5 s for the write Redis is paused under only: the writes and the read around it have a bound, not a pace.
    nodes = Nodes(connect(own_redis.url, 30.0))
    assert own_redis.process is not None
    pid = own_redis.process.pid
    try:
        await warm(nodes)
        got = Handed()
        lane_of(nodes).timeout_s = 0.5
        os.kill(pid, signal.SIGSTOP)
        try:
            assert nodes.begin([echo("late")], got)
            (late,) = await got.once()
        finally:
            os.kill(pid, signal.SIGCONT)
        lane_of(nodes).timeout_s = 30.0
        assert isinstance(late, RedisTimeoutError)
        assert lane_of(nodes)._busy == 0
        assert await nodes.run([echo("mine")]) == [b"mine"]  # its own reply, on a fresh connection
        assert int(await nodes.reader.get("n")) == 3  # the late write did land: in doubt, not lost
    finally:
        await nodes.aclose()


async def test_a_begun_write_is_answered_when_the_lane_closes_under_it(own_redis: EmbeddedRedis) -> None:
    """Redis paused: the write's reply cannot come before the close, whatever the host's pace (a 300 ms
    script and a 0.05 s sleep let a process stalled 0.25 s be handed the reply instead)."""
    nodes = Nodes(connect(own_redis.url, 5.0))
    assert own_redis.process is not None
    pid = own_redis.process.pid
    try:
        await warm(nodes)
        got = Handed()
        os.kill(pid, signal.SIGSTOP)
        try:
            assert nodes.begin([echo("slow")], got)  # written before it returns
            await lane_of(nodes).aclose()
            (ended,) = await got.once()
        finally:
            os.kill(pid, signal.SIGCONT)
        assert isinstance(ended, RedisConnectionError)
        assert lane_of(nodes)._busy == 0
    finally:
        await nodes.aclose()


async def test_a_begun_write_whose_script_is_gone_loads_it_and_sends_those_calls_again(warmed: Nodes) -> None:
    nodes = warmed
    await nodes.reader.script_flush()
    got = Handed()
    assert nodes.begin([echo("x"), echo("y")], got)
    assert await got.once() == [b"x", b"y"]
    assert int(await nodes.reader.get("n")) == 3  # each ran once


async def test_a_command_that_cannot_be_packed_is_not_begun(warmed: Nodes) -> None:
    nodes = warmed
    got = Handed()
    assert not nodes.begin([Call(echo("x").script, ["n"], [object()])], got)
    assert lane_of(nodes)._busy == 0 and len(lane_of(nodes)._idle) == 1
    assert nodes.begin([echo("y")], got)
    assert await got.once() == [b"y"]


def idle_lane(connections: int, timeout_s: float | None = None) -> Lane:
    """A lane that makes no connection in these tests: only its turns are used."""
    lane = Lane(ConnectionPool(host="127.0.0.1", port=1), connections=connections)
    lane.timeout_s = timeout_s
    return lane


async def test_a_turn_handed_to_an_exchange_cancelled_before_it_ran_goes_to_the_next() -> None:
    lane = idle_lane(1)
    await lane._acquire()
    first = asyncio.create_task(lane._acquire())
    second = asyncio.create_task(lane._acquire())
    await asyncio.sleep(0)
    lane._release()  # hands the turn to ``first``...
    first.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 10)  # the turn went on (a bound against a hang, not a timing)
    assert lane._busy == 1 and not lane._turns
    lane._release()
    assert lane._busy == 0


async def test_an_exchange_that_waited_too_long_for_a_turn_leaves_none_behind() -> None:
    lane = idle_lane(1, timeout_s=0.05)
    await lane._acquire()
    with pytest.raises(RedisTimeoutError, match="busy"):
        await lane._acquire()
    assert not lane._turns
    lane._release()
    assert lane._busy == 0
    await lane._acquire()  # free again at once
    assert lane._busy == 1


async def test_turns_go_to_waiting_exchanges_oldest_first() -> None:
    lane = idle_lane(1)
    await lane._acquire()
    order: list[int] = []

    async def take(n: int) -> None:
        await lane._acquire()
        order.append(n)

    waiting = [asyncio.create_task(take(n)) for n in range(3)]
    await asyncio.sleep(0)
    for _ in range(3):
        lane._release()
        await asyncio.sleep(0)
    await asyncio.gather(*waiting)
    assert order == [0, 1, 2] and lane._busy == 1


async def test_a_begun_write_refused_by_a_script_keeps_its_connection_and_hands_the_refusal_over(
        warmed: Nodes) -> None:
    """An error reply (here a script's error: no such command) is the call's own reply, as with
    ``run``; every reply was read, so the connection stays in step and is used again."""
    nodes = warmed
    got = Handed()
    assert nodes.begin([Call(Script("return redis.call('NOSUCHCOMMAND')"), ["n"], []), echo("ok")], got)
    refused, ok = await got.once()
    assert isinstance(refused, ResponseError) and not isinstance(refused, NoScriptError) and ok == b"ok"
    assert lane_of(nodes)._busy == 0 and len(lane_of(nodes)._idle) == 1


async def test_a_begun_write_refused_readonly_drops_the_connection(tmp_path: Path) -> None:
    """A begun write that reaches a replica (READONLY) drops its connection and the lane's other
    idle ones, as ``exchange`` does: kept, they would refuse every later write."""
    primary = EmbeddedRedis(tmp_path / "p").start()
    replica = EmbeddedRedis(tmp_path / "r", extra_args=["--replicaof", "127.0.0.1", str(primary.port)]).start()
    nodes = Nodes(connect(replica.url, 5.0))
    try:
        lane = lane_of(nodes)
        # One idle connection, to the replica, which has the script (no NOSCRIPT detour: the begun
        # write itself meets the READONLY).
        assert await lane.exchange([("SCRIPT", "LOAD", echo("x").script.body)]) == [echo("x").script.sha.encode()]
        got = Handed()
        assert nodes.begin([echo("refused")], got)
        (refused,) = await got.once()
        assert isinstance(refused, ReadOnlyError)
        assert lane._busy == 0 and not lane._idle and lane.open_connections == 0
    finally:
        await nodes.aclose()
        for node in (primary, replica):
            node.kill()
            node.stop()
