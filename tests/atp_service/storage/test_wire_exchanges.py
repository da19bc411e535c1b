"""One write connection's exchanges at their edges (``Wire.send``, ``data_received``, ``end``; ``Lane``'s
end of an exchange): push messages, replies split or doubled across reads, error replies mid-batch,
a failed write, the deadline watchdog. The RESP parsing and bookkeeping alone, over a stand-in
transport; the same paths against a real redis-server are in test_lane.py and test_log.py."""

from __future__ import annotations

import asyncio
import math
from collections import deque
from types import SimpleNamespace
from typing import Any

import pytest
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_service.storage.lane import Lane
from atp_service.storage.wire import Wire


class _Transport:
    def __init__(self, fail: bool = False) -> None:
        self.written: list[bytes] = []
        self.closed = False
        self.fail = fail

    def write(self, data: bytes) -> None:
        if self.fail:
            raise OSError("broken pipe")
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class _Conn:
    encoder = SimpleNamespace(decode_responses=False, encoding="utf-8", encoding_errors="strict")
    is_connected = False


def _wire(fail: bool = False) -> Wire:
    conn = _Conn()
    return Wire(conn, _Transport(fail), SimpleNamespace(connection_lost=lambda exc: None), "h")  # type: ignore[arg-type]


def _lane_over(wire: Wire) -> Lane:
    """A lane whose one idle connection is ``wire`` (made without connecting: ``begin_packed`` and an
    exchange's end use only these fields)."""
    lane = Lane.__new__(Lane)
    lane._idle, lane._busy, lane._turns, lane._closed = [wire], 0, deque(), False
    lane.connections, lane.timeout_s, lane._open, lane._closing, lane._pool = 8, 5.0, set(), set(), None
    return lane


PUSH = b">2\r\n$7\r\nmessage\r\n$1\r\nx\r\n"


async def test_push_then_reply_and_a_partial_reply_then_the_rest() -> None:
    wire = _wire()
    got: list[Any] = []
    wire.send(b"X", 2, got.append, 5.0)
    wire.data_received(PUSH + b"*1\r\n$3\r\n1-0\r\n*1\r\n$3")
    assert got == [] and not wire.closed
    wire.data_received(b"\r\n2-0\r\n")
    assert got == [[[b"1-0"], [b"2-0"]]] and not wire.refused and not wire.closed


@pytest.mark.parametrize(("expected", "read", "ended_by"), [
    (1, b"*1\r\n$3\r\n1-0\r\n+OK\r\n", RedisConnectionError),
    (1, b"*1\r\n$3\r\n1-0\r\n" + PUSH, RedisConnectionError),
    (3, b"+OK\r\n-LOADING Redis is loading\r\n+OK\r\n", BusyLoadingError),
], ids=["two replies for one expected", "a push after the last reply", "an error redis-py raises mid-batch"])
async def test_a_read_that_does_not_fit_the_exchange_ends_it_in_doubt_and_the_connection(
        expected: int, read: bytes, ended_by: type[Exception]) -> None:
    """Replies the exchange did not ask for (the connection may be out of step with its server), or
    an error redis-py raises rather than returns: the exchange ends with an exception (in doubt, R7)
    and the connection is never used again."""
    wire = _wire()
    got: list[Any] = []
    wire.send(b"X", expected, got.append, 5.0)
    wire.data_received(read)
    assert len(got) == 1 and isinstance(got[0], ended_by)
    assert wire.closed and wire.refused


async def test_an_error_reply_mid_batch_is_a_reply_and_marks_refused() -> None:
    wire = _wire()
    got: list[Any] = []
    wire.send(b"X", 3, got.append, 5.0)
    wire.data_received(b"+OK\r\n-ERR boom\r\n+OK\r\n")
    (replies,) = got
    assert replies[0] == b"OK" and isinstance(replies[1], ResponseError) and replies[2] == b"OK"
    assert wire.refused and not wire.closed
    got.clear()
    wire.send(b"Y", 1, got.append, 5.0)  # the next exchange starts clean
    assert not wire.refused
    wire.data_received(b"+OK\r\n")
    assert got == [[b"OK"]] and not wire.refused


async def test_bytes_with_no_exchange_end_the_connection() -> None:
    wire = _wire()
    wire.data_received(b"+OK\r\n")
    assert wire.closed


async def test_the_watchdog_times_out_a_short_exchange_after_a_long_one_and_rearms_after_idle() -> None:
    wire = _wire()
    got: list[Any] = []
    assert wire._watchdog_at == math.inf
    wire.send(b"X", 1, got.append, 30.0)
    wire.data_received(b"+OK\r\n")
    assert got == [[b"OK"]]
    got.clear()
    wire.send(b"Y", 1, got.append, 0.05)  # shorter deadline than the armed watchdog: re-armed earlier
    assert wire._watchdog_at < wire.loop.time() + 1
    # The deadline passing on the loop's clock is what is tested, not a wait for it: the loop runs timers due in
    # the order of their time, so the watchdog's (0.05 s, or 1 ms later if it woke early) always runs before this
    # sleep's (0.2 s) returns, however late a busy host wakes the loop.
    await asyncio.sleep(0.2)
    assert len(got) == 1 and isinstance(got[0], RedisTimeoutError) and wire.closed and wire.refused
    assert wire._watchdog is None and wire._watchdog_at == math.inf


async def test_a_watchdog_that_woke_while_idle_is_armed_again_by_the_next_exchange() -> None:
    wire = _wire()
    got: list[Any] = []
    wire.send(b"X", 1, got.append, 0.02)
    wire.data_received(b"+OK\r\n")
    await asyncio.sleep(0.1)  # the watchdog wakes with nothing running: its timer (0.02 s) runs before this one's
    assert wire._watchdog is None and wire._watchdog_at == math.inf
    got.clear()
    wire.send(b"Y", 1, got.append, 0.05)
    assert wire._watchdog is not None
    await asyncio.sleep(0.2)  # past the deadline on the loop's clock, as above: the watchdog's timer runs first
    assert isinstance(got[0], RedisTimeoutError)


async def test_a_write_that_raises_hands_the_fault_an_exception_and_frees_the_turn() -> None:
    wire = _wire(fail=True)
    lane = _lane_over(wire)
    done: list[Any] = []
    fault: list[Any] = []
    assert lane.begin_packed(b"X", 1, done.append, fault.append)
    assert done == [] and len(fault) == 1 and isinstance(fault[0], RedisConnectionError)
    assert lane._busy == 0 and lane._idle == [] and wire.closed


async def test_an_error_reply_through_the_lane_goes_to_fault_and_keeps_the_connection() -> None:
    wire = _wire()
    lane = _lane_over(wire)
    done: list[Any] = []
    fault: list[Any] = []
    assert lane.begin_packed(b"X", 1, done.append, fault.append)
    wire.data_received(b"-ERR script refused\r\n")
    assert done == [] and len(fault) == 1 and isinstance(fault[0][0], ResponseError)
    assert lane._busy == 0 and lane._idle == [wire]
    assert lane.begin_packed(b"Y", 1, done.append, fault.append)
    wire.data_received(b"*1\r\n$3\r\n1-0\r\n")
    assert done == [[[b"1-0"]]] and len(fault) == 1 and lane._idle == [wire]


if __name__ == "__main__":
    pytest.main([__file__])
