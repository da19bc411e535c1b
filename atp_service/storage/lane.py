"""A write lane: the connections one Redis node's write scripts go on, held outside redis-py's pool.

At 1,000 calls/s most group commits carry one or two entries, so nearly every call pays a round
trip of its own, and redis-py's generic command path costs more client CPU than the trip itself:
the pool's lock around getting and releasing a connection, a ``wait_for`` task for the write and a
timeout context for every reply read, the response callbacks. A lane sends every command of one
exchange in one write on a connection of its own and reads the replies in order under one deadline
(the client's socket timeout) for the whole exchange.

What the pool did for safety the lane does too, each for a fault the service has met:

- a connection is made outside the exchange's deadline, bounded by redis-py's own connect timeout;
  a connect that failed or was cancelled half-way is closed and never used (a half-made connection
  left by a cancelled connect once kept every write failing after a cluster node restarted);
- a connection goes back to the idle list only once every reply of its exchange was read: one that
  timed out, failed or whose caller was cancelled mid-exchange is closed, so a late reply is never
  read as the answer to a later call;
- an idle connection is checked before use (the server may have closed it: a restart, ``CLIENT
  KILL``) and replaced by a fresh one: the service never retries a write blindly (a retried append
  could log twice), so a write sent on a dead socket would fail without having reached Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

LANE_CONNECTIONS = 8
"""Connections one lane keeps to its node at most. The writes in flight at once per node are few —
the log's group commits (one at a time unless ``max_in_flight`` says otherwise), a snapshot, a
fence, a claim or a lease renewal — so more than a handful means something is stuck; past this an
exchange waits (at most the socket timeout) for one to come free rather than open yet another."""


class Lane:
    """The write connections of one Redis node, each used by one exchange at a time. They are made
    with the connection class and arguments of ``pool`` (the node's client's), so whatever that
    client was configured with carries over: TLS, credentials, a unix socket, hiredis packing, the
    timeouts."""

    def __init__(self, pool: ConnectionPool, connections: int = LANE_CONNECTIONS) -> None:
        self._class: Any = pool.connection_class
        self._kwargs: dict[str, Any] = dict(pool.connection_kwargs)
        self.timeout_s: float | None = self._kwargs.get("socket_timeout")
        """Deadline of one exchange, write and every reply together: the client's socket timeout."""
        self.connections = connections
        self._idle: list[AbstractConnection] = []  # connected, every reply read: ready for the next exchange
        self._open: set[AbstractConnection] = set()  # every connection made and not yet closed
        self._free = asyncio.Semaphore(connections)

    async def exchange(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Each command's reply, in order; a command's error reply (a ``ResponseError``: a script's
        refusal, NOSCRIPT, MOVED...) is its reply, as in a redis-py pipeline. Raises what ended the
        exchange before every reply was read (no connection, a timeout, a closed socket): whether
        the commands ran is then unknown."""
        await self._acquire()
        try:
            conn = await self._take()
            replies = await self._send_and_read(conn, commands)
            self._idle.append(conn)  # every reply read: the connection is in step with its server
            return replies
        finally:
            self._free.release()

    @property
    def open_connections(self) -> int:
        """Connections made and not yet closed (busy or idle)."""
        return len(self._open)

    async def aclose(self) -> None:
        """Close every connection, idle or busy (a busy exchange then fails with a closed socket)."""
        conns, self._idle = list(self._open), []
        self._open.clear()
        for conn in conns:
            with contextlib.suppress(RedisError, OSError):  # a node that is gone: nothing more to close
                await conn.disconnect()

    async def _acquire(self) -> None:
        """A turn to hold a connection; waits (at most the socket timeout) while all are busy."""
        if not self._free.locked():
            await self._free.acquire()  # does not suspend
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._free.acquire()
        except TimeoutError:
            raise RedisTimeoutError(f"all {self.connections} write connections to {self._host()} stayed busy "
                                    f"for {self.timeout_s}s") from None

    async def _take(self) -> AbstractConnection:
        """An idle connection the server still holds open, or a new one."""
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to have been closed
            if await self._ready(conn):
                return conn
            await self._close(conn)
        return await self._connect()

    async def _ready(self, conn: AbstractConnection) -> bool:
        """Whether ``conn`` is connected with nothing to read: the server closing it (a restart,
        ``CLIENT KILL``) leaves it at end of file, which the parser reports as data to read."""
        if not conn.is_connected:
            return False
        try:
            return not await conn.can_read()
        except (RedisConnectionError, OSError):
            return False

    async def _connect(self) -> AbstractConnection:
        """A new connection, handshake done (AUTH, SELECT, HELLO), bounded by redis-py's own
        timeouts (``socket_connect_timeout`` to connect, ``socket_timeout`` per handshake reply) and
        not by an exchange's deadline. Failed or cancelled half-way, it is closed, never kept."""
        conn: AbstractConnection = self._class(**self._kwargs)
        self._open.add(conn)
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            await self._close(conn)
            raise
        # From here the exchange's one deadline bounds the write and the replies: without a socket
        # timeout, redis-py writes without a wait_for task and reads without a timeout per reply.
        conn.socket_timeout = None
        return conn

    async def _send_and_read(self, conn: AbstractConnection, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """The commands in one write, then their replies; ``conn`` is closed unless every reply was
        read (a timeout, an error or the caller's cancellation at any point)."""
        done = False
        try:
            packed = conn.pack_commands(commands)
            async with asyncio.timeout(self.timeout_s):
                await conn.send_packed_command(packed, check_health=False)
                replies = [await _reply(conn) for _ in commands]
            done = True
        except TimeoutError:
            raise RedisTimeoutError(f"Timeout reading from {self._host()}") from None
        finally:
            if not done:
                await self._close(conn)
        return replies

    async def _close(self, conn: AbstractConnection) -> None:
        """Close ``conn`` for good (it is never handed out again); does not wait for the socket."""
        self._open.discard(conn)
        if conn.is_connected:
            await conn.disconnect(nowait=True)  # closes without suspending, so a cancellation cannot stop it

    def _host(self) -> str:
        kwargs = self._kwargs
        return str(kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}")


async def _reply(conn: AbstractConnection) -> Any:
    """The next reply on ``conn``; an error reply is returned, not raised (it leaves the connection
    in step: its reply was read)."""
    try:
        return await conn.read_response()
    except ResponseError as exc:
        return exc
