"""The protocol of one write-lane connection (``lane.py``): replies read by hiredis, one exchange at
a time, each under a deadline."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import hiredis
from redis._parsers import BaseParser
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Done", "Wire"]

Done = Callable[[Any], None]
"""Called once with an exchange's replies (a list), or with the exception that ended it."""

_NOT_ENOUGH = object()
"""What the hiredis reader answers while a reply is still incomplete (a reply may be ``None``)."""
_PUSH = getattr(hiredis, "PushNotification", ())
"""A RESP3 push (hiredis >= 3.2): never a command's reply; skipped as redis-py skips it."""
_TIMER_RESOLUTION_S = 0.001
"""uvloop's timers count whole milliseconds."""


class Wire(asyncio.Protocol):
    """The protocol of one lane connection, in place of redis-py's ``StreamReaderProtocol``: bytes
    go straight into a hiredis reader, and the exchange waiting is woken once, when its last reply
    is whole. There is at most one exchange at a time (``expect``); bytes when none waits, a broken
    reply, the end of file or a deadline passed close the connection, which no exchange uses again
    (``closed``).

    The deadline is kept lazily: an exchange only notes when it must be over, and one timer per
    connection (the watchdog) wakes at the noted time, times the exchange out if it is still
    running, or sleeps again until the deadline of the exchange running then. A group commit at
    1,000 calls/s thus arms no timer of its own (a timer armed and cancelled per exchange cost
    about as much as parsing the reply)."""

    def __init__(self, conn: AbstractConnection, transport: asyncio.Transport, stream: asyncio.BaseProtocol,
                 host: str) -> None:
        self.conn, self.transport, self.host = conn, transport, host
        self.loop = asyncio.get_running_loop()
        self.closed = False
        """The connection ended or is ending (end of file, a close, a fault): never used again."""
        self._stream = stream  # redis-py's protocol, told of the close so that disconnect() can wait for it
        encoder = conn.encoder
        self._reader = hiredis.Reader(
            protocolError=InvalidResponse,
            replyError=BaseParser.parse_error,  # redis-py's own mapping: NOSCRIPT -> NoScriptError, MOVED...
            notEnoughData=_NOT_ENOUGH,
            **({"encoding": encoder.encoding, "errors": encoder.encoding_errors} if encoder.decode_responses else {}),
        )
        self._done: Done | None = None  # the exchange waiting for replies, if any
        self._replies: list[Any] = []
        self._expected = 0
        self.refused = False
        """The running (or last) exchange's replies include an error reply (a script's refusal,
        NOSCRIPT, READONLY...), or it ended without them (``end``): noted as it happens, so that
        whoever gets what it ended with need not look at it on every exchange (nearly none has
        anything to see)."""
        self._deadline = 0.0  # loop time by which the running exchange must be over (while ``_done``)
        self._watchdog: asyncio.TimerHandle | None = None
        self._watchdog_at = math.inf  # when the watchdog wakes (none armed: never)

    @classmethod
    def take_over(cls, conn: AbstractConnection, host: str = "") -> Wire:
        """Move ``conn``'s transport, just connected by redis-py, onto a new ``Wire``; ``host`` names
        the node in a timeout's message."""
        # redis-py private attribute (8.1): ``_writer`` is the StreamWriter its ``_connect`` got
        # from ``asyncio.open_connection`` (or ``open_unix_connection``). If a redis-py upgrade
        # renames or replaces it, this fails at the first connect, loudly, and the test
        # ``test_redis_py_still_holds_the_stream_writer_the_lane_takes_over`` says why.
        writer = getattr(conn, "_writer", None)
        if not isinstance(writer, asyncio.StreamWriter):
            raise RuntimeError(f"redis-py's connection has no StreamWriter in _writer ({writer!r}): "
                               "the write lane cannot take over its transport")
        transport: Any = writer.transport
        if transport.is_closing():
            raise RedisConnectionError("the connection closed during its handshake")
        wire = cls(conn, transport, transport.get_protocol(), host)
        transport.set_protocol(wire)
        return wire

    def expect(self, count: int, done: Done, timeout_s: float | None = None) -> None:
        """The next ``count`` replies (one at least) go to ``done``, once (or what ends the
        connection first: with ``timeout_s``, a ``TimeoutError`` that many seconds from now); called
        before the commands are written."""
        if self.closed:
            raise RedisConnectionError("the write connection was closed")
        self._done = done
        self._replies, self._expected, self.refused = [], count, False
        if timeout_s is not None:  # ``deadline_in``, written out for a watchdog that wakes first (nearly always)
            self._deadline = deadline = self.loop.time() + timeout_s
            if self._watchdog_at > deadline:  # none armed (``inf``), or one that wakes too late
                self.deadline_in(timeout_s)

    def send(self, packed: bytes, count: int, done: Done, timeout_s: float | None) -> None:
        """``expect``, then ``packed`` (``count`` commands in RESP) written: an exchange begun by the
        lane (``Lane.begin_packed``) on this connection, which it took open from its idle ones.
        ``expect`` written out (every group commit's)."""
        self._done = done
        self._replies, self._expected, self.refused = [], count, False
        if timeout_s is not None:
            self._deadline = deadline = self.loop.time() + timeout_s
            if self._watchdog_at > deadline:  # none armed (``inf``), or one that wakes too late
                self.deadline_in(timeout_s)
        try:
            self.transport.write(packed)
        except Exception as exc:  # whether any of it left is unknown: in doubt, as after a timeout
            self.end(RedisConnectionError(f"writing to {self.host} failed: {exc!r}"))

    def deadline_in(self, timeout_s: float) -> None:
        """The running exchange times out ``timeout_s`` from now (unless over by then)."""
        self._deadline = deadline = self.loop.time() + timeout_s
        if self._watchdog_at <= deadline:
            return  # one is armed, and wakes first: it sleeps on until this deadline
        if self._watchdog is not None:
            self._watchdog.cancel()  # an exchange with a shorter deadline than the last one's
        self._watch_until(deadline)

    def _watch_until(self, when: float) -> None:
        self._watchdog = self.loop.call_at(when, self._check_deadline)
        self._watchdog_at = when

    def _check_deadline(self) -> None:
        """The watchdog's wake-up: the exchange running now times out if its deadline has passed."""
        self._watchdog, self._watchdog_at = None, math.inf
        if self._done is None or self.closed:
            return  # nothing running: the next exchange arms it again
        now = self.loop.time()
        if now >= self._deadline:
            self.time_out()
        else:  # a timer of uvloop's may wake up to 1 ms early: not again and again until then
            self._watch_until(max(self._deadline, now + _TIMER_RESOLUTION_S))

    def time_out(self) -> None:
        """The exchange's deadline passed: it fails, and the connection is closed (a late reply
        must never be read by a later exchange)."""
        self.end(RedisTimeoutError(f"Timeout reading from {self.host}"))

    def data_received(self, data: bytes) -> None:
        done = self._done
        if done is None or self.closed:  # no exchange waits: out of step with the server
            self.end(RedisConnectionError("a reply came that no exchange was waiting for"))
            return
        reader, replies = self._reader, self._replies
        reader.feed(data)
        try:
            while True:  # an exchange waits for one reply at least (``expect``), and none is whole yet
                reply = reader.gets()
                if type(reply) is not list:  # a script's reply (every log append's) is: no error, no push
                    if reply is _NOT_ENOUGH:
                        return
                    if isinstance(reply, Exception):
                        if not isinstance(reply, ResponseError):
                            raise reply  # LOADING, max clients...: redis-py raises these, not returns them
                        self.refused = True
                    if isinstance(reply, _PUSH):  # (a subclass of list: never a script's reply)
                        continue
                replies.append(reply)
                if len(replies) >= self._expected:
                    break
        except Exception as exc:  # a broken reply (InvalidResponse), or one redis-py raises
            self.end(exc)
            return
        if reader.has_data():  # more than was asked for: the replies may not be the commands'
            self.end(RedisConnectionError("a reply came that no exchange was waiting for"))
            return
        self._done = None
        done(replies)

    def eof_received(self) -> bool:
        self.end(RedisConnectionError("Connection closed by server."))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.end(RedisConnectionError("Connection closed by server.") if exc is None else
                 RedisConnectionError(f"Error while reading from the write connection: {exc!r}"))
        self._stream.connection_lost(exc)

    def end(self, exc: Exception) -> None:
        """End the waiting exchange, if any, with ``exc`` and close the connection."""
        self.closed = self.refused = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog, self._watchdog_at = None, math.inf
        done, self._done = self._done, None
        self.transport.close()
        if done is not None:
            done(exc)
