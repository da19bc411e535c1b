"""A write lane: the connections one Redis node's write scripts go on, held outside redis-py's pool.

At 1,000 calls/s most group commits carry one or two entries, so nearly every call pays a round
trip of its own, and redis-py's generic command path costs more client CPU than the trip itself:
the pool's lock around getting and releasing a connection, a ``wait_for`` task for the write and a
timeout context for every reply read, the response callbacks. Even a connection of its own read
through redis-py (``read_response`` on a ``StreamReader`` under ``asyncio.timeout``) costs ~60 µs a
round trip, ten times what parsing the bytes does. So a lane lets redis-py make each connection
(TLS, AUTH, SELECT, HELLO, the connect timeout) and then takes over its transport with a protocol
of its own (``Wire``, ``wire.py``): an exchange is one ``transport.write`` of every command, one
callback that ``data_received`` calls once a hiredis reader holds every reply, and a deadline (the
client's socket timeout) for the whole exchange. ``exchange`` awaits that callback's future;
``begin`` (the log's group commits, when a connection is idle) needs no task at all.

What the pool did for safety the lane does too, each for a fault the service has met:

- a connection is made outside the exchange's deadline, bounded by redis-py's own connect timeout;
  a connect that failed or was cancelled half-way is closed and never used (a half-made connection
  left by a cancelled connect once kept every write failing after a cluster node restarted);
- a connection goes back to the idle list only once every reply of its exchange was read: one that
  timed out, failed or whose caller was cancelled mid-exchange is closed, so a late reply is never
  read as the answer to a later call; bytes arriving while no exchange waits close it too;
- an idle connection the server closed (a restart, ``CLIENT KILL``) is never used again: its
  protocol saw the end of file and marked it closed, and the exchange takes a fresh one — the
  service never retries a write blindly (a retried append could log twice), so a write sent on a
  dead socket would fail without having reached Redis;
- a connection whose server refused a write READONLY reaches a replica: a failover behind one
  address (a managed Redis's name, a proxy) sends new connections to the promoted replica while
  those open still reach the old primary. Kept, they would refuse every write for good, and a shard
  in doubt would never settle; so it is closed, with every idle one and the client's pooled ones
  (the reads that settle a write must reach where the write goes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_service.storage.wire import Done, Wire
from atp_service.tasks import keep, wake_oldest

log = logging.getLogger(__name__)

LANE_CONNECTIONS = 8
"""Connections one lane keeps to its node at most. The writes in flight at once per node are few —
the log's group commits (one at a time on one Redis; on a cluster one per shard, mostly one per
node: its shards are answered together), a snapshot, a fence, a claim or a lease renewal — so
more than a handful means something is stuck; past this an exchange waits (at most the socket
timeout) for one to come free rather than open yet another."""

_pack_command = hiredis.pack_command


class Lane:
    """The write connections of one Redis node, each used by one exchange at a time. They are made
    with the connection class and arguments of ``pool`` (the node's client's), so whatever that
    client was configured with carries over: TLS, credentials, a unix socket, the
    timeouts."""

    def __init__(self, pool: ConnectionPool, connections: int = LANE_CONNECTIONS) -> None:
        self._pool = pool  # its pooled connections reach the same address (``_reached_replica``)
        self._class: Any = pool.connection_class
        self._kwargs: dict[str, Any] = dict(pool.connection_kwargs)
        self.timeout_s: float | None = self._kwargs.get("socket_timeout")
        """Deadline of one exchange, write and every reply together: the client's socket timeout."""
        self.connections = connections
        self._idle: list[Wire] = []  # connected, every reply read: ready for the next exchange
        self._open: set[AbstractConnection] = set()  # every connection made and not yet closed
        self._busy = 0  # exchanges holding a turn: at most ``connections``
        self._turns: deque[asyncio.Future[None]] = deque()  # exchanges waiting for a turn, oldest first
        self._host = str(self._kwargs.get("path") or f"{self._kwargs.get('host')}:{self._kwargs.get('port')}")
        self._closed = False  # aclose() ran: a connection that finishes connecting afterwards is closed
        self._closing: set[asyncio.Task[None]] = set()  # sockets ``_drop`` closes
        check_writable(self._kwargs)

    async def exchange(self, commands: Sequence[Sequence[Any]], extra_s: float = 0.0, keep: bool = True) -> list[Any]:
        """Each command's reply, in order; a command's error reply (a ``ResponseError``: a script's
        refusal, NOSCRIPT, MOVED...) is its reply, as in a redis-py pipeline. Raises what ended the
        exchange before every reply was read (no connection, a timeout, a closed socket): whether
        the commands ran is then unknown. ``extra_s``: what a command may wait on the server's side
        beyond the socket timeout (``WAIT``'s own timeout), added to the exchange's deadline.
        ``keep=False``: the connection is closed after, whatever state the commands left it in (a
        ``MULTI`` whose ``DISCARD`` was refused would have every later write answered ``QUEUED``)."""
        if not commands:
            return []  # no reply will come: nothing to wait for
        await self._acquire()
        try:
            wire = await self._take()
            replies = await self._send_and_read(wire, commands, extra_s)
            if _read_only(replies):
                await self._close(wire.conn)
                self._reached_replica()
            elif self._closed or not keep:
                await self._close(wire.conn)
            else:
                self._idle.append(wire)  # every reply read: the connection is in step with its server
            return replies
        finally:
            self._release()

    def begin(self, commands: Sequence[Sequence[Any]], done: Done, fault: Done | None = None) -> bool:
        """``exchange`` begun now, without suspending, where a turn is free and a connection idle:
        the commands are written before this returns, and ``done`` gets the replies, or what ended
        the exchange, once, from the connection's protocol (no task, no coroutine). With ``fault``,
        ``done`` gets only replies none of which is an error reply, and ``fault`` the rest (what
        ended the exchange, or replies with an error among them): the caller's own look at every
        reply is then needed only where there is something to see. False: nothing was sent; use
        ``exchange``. At 1,000 calls/s most group commits find the lane idle, and each step of a
        task's await chain is one more turn of the event loop (a system call) per commit."""
        if not commands:
            return False
        try:
            packed = pack(commands)
        except DataError:
            return False  # ``exchange`` fails it, alone
        return self.begin_packed(packed, len(commands), done, fault)

    def begin_packed(self, packed: bytes, count: int, done: Done, fault: Done | None = None) -> bool:
        """``begin`` of ``count`` commands already in RESP, ``packed`` (the log's group commit:
        ``append_resp``)."""
        idle = self._idle
        if self._busy >= self.connections or self._turns or not idle or idle[-1].closed:
            return False
        wire = idle.pop()
        self._busy += 1
        # Positional arguments only: a partial without keywords is called by vectorcall.
        wire.send(packed, count, partial(self._finished, wire, done, fault), self.timeout_s)
        return True

    def _finished(self, wire: Wire, done: Done, fault: Done | None, result: Any) -> None:
        """The end of an exchange begun on ``wire`` (``begin_packed``): its turn given back and its
        connection idle again (or dropped), then ``result`` handed to ``done``, or to ``fault`` where
        the exchange ended or met an error reply."""
        if self._turns:  # ``_release``: a turn handed to the oldest exchange waiting (nearly never)
            self._release()
        else:
            self._busy -= 1
        if wire.refused:  # an error reply, or the exchange ended (``result`` what ended it)
            self._after_fault(wire, result, done if fault is None else fault)
            return
        if self._closed:  # the lane closed meanwhile: its connection is never used again
            self._drop(wire.conn)
        else:
            self._idle.append(wire)  # every reply read, none refused: in step with its server
        try:  # ``_hand``, written out: this runs on every group commit
            done(result)
        except Exception:
            log.exception("a write's reply could not be handed on")

    def _after_fault(self, wire: Wire, result: Any, hand_to: Done) -> None:
        """A begun exchange that ended (``result`` an exception) or met an error reply: its
        connection kept or dropped as ``exchange`` would, then ``result`` handed on."""
        if _read_only(result):
            self._drop(wire.conn)
            self._reached_replica()
        elif wire.closed or self._closed:  # failed, timed out, or the lane closed: never used again
            self._drop(wire.conn)
        else:
            self._idle.append(wire)  # every reply read (a refusal among them): in step with its server
        _hand(hand_to, result)

    @property
    def open_connections(self) -> int:
        """Connections made and not yet closed (busy or idle)."""
        return len(self._open)

    async def aclose(self) -> None:
        """Close every connection, idle or busy (a busy exchange then fails with a closed socket)."""
        self._closed = True
        conns, self._idle = list(self._open), []
        self._open.clear()
        for conn in conns:
            with contextlib.suppress(RedisError, OSError):  # a node that is gone: nothing more to close
                await conn.disconnect()

    def retire(self) -> None:
        """Out of use for good, without failing what is in flight: its idle connections are closed
        now, each busy one once its exchange ends (its replies read or its failure met, as they
        would); an exchange that starts later finds no connection to take and fails unsent."""
        self._closed = True
        idle, self._idle = self._idle, []
        for wire in idle:
            self._drop(wire.conn)

    async def _acquire(self) -> None:
        """A turn to hold a connection; waits (at most the socket timeout) while all are busy."""
        if self._busy < self.connections and not self._turns:
            self._busy += 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._turns.append(turn)
        try:
            async with asyncio.timeout(self.timeout_s):
                await turn  # ``_release`` hands its turn over: ``_busy`` stays as it was
        except BaseException as exc:
            if turn.done() and not turn.cancelled():
                self._release()  # handed a turn it will not use (timed out or cancelled meanwhile): pass it on
            else:
                turn.cancel()
                with contextlib.suppress(ValueError):  # ValueError: a release skipped it (and dropped it) already
                    self._turns.remove(turn)
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(f"all {self.connections} write connections to {self._host} stayed busy "
                                        f"for {self.timeout_s}s") from None
            raise

    def _release(self) -> None:
        """An exchange is over: its turn goes to the oldest exchange waiting, or back to the lane."""
        if not (self._turns and wake_oldest(self._turns)):  # none waiting (nearly always): no call
            self._busy -= 1

    async def _take(self) -> Wire:
        """An idle connection the server still holds open, or a new one. The server closing one (a
        restart, ``CLIENT KILL``) reached its protocol as the end of file while it sat idle."""
        while self._idle:
            wire = self._idle.pop()  # the most recently used: the least likely to have been closed
            if not wire.closed:
                return wire
            await self._close(wire.conn)
        return await self._connect()

    async def _connect(self) -> Wire:
        """A new connection, handshake done (AUTH, SELECT, HELLO), bounded by redis-py's own
        timeouts (``socket_connect_timeout`` to connect, ``socket_timeout`` per handshake reply) and
        not by an exchange's deadline, then taken over by a ``Wire``. Failed or cancelled half-way,
        it is closed, never kept."""
        if self._closed:  # retired (``retire``) or closed: its node is no longer where writes go
            raise RedisConnectionError(f"the write lane to {self._host} is closed")
        conn: AbstractConnection = self._class(**self._kwargs)
        self._open.add(conn)
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
            # Nothing may follow the handshake's replies: bytes (or the end of file) already read
            # by redis-py's parser would never reach the wire, and would put it out of step.
            if await conn.can_read():
                raise RedisConnectionError(f"{self._host} sent more than the handshake's replies")
            if self._closed:
                raise RedisConnectionError(f"the write lane to {self._host} is closed")
            return Wire.take_over(conn, self._host)
        except BaseException:
            await self._close(conn)
            raise

    async def _send_and_read(self, wire: Wire, commands: Sequence[Sequence[Any]], extra_s: float) -> list[Any]:
        """The commands in one write, then their replies; the connection is closed unless every
        reply was read (a timeout, an error or the caller's cancellation at any point)."""
        done = False
        try:
            packed = pack(commands)
            replies: asyncio.Future[list[Any]] = wire.loop.create_future()
            wire.expect(len(commands), lambda result: _settle(replies, result))
            wire.transport.write(packed)
            if self.timeout_s is not None:
                wire.deadline_in(self.timeout_s + extra_s)
            got = await replies
            done = True
            return got
        finally:
            if not done:
                await self._close(wire.conn)

    async def _close(self, conn: AbstractConnection) -> None:
        """Close ``conn`` for good (it is never handed out again); does not wait for the socket."""
        self._open.discard(conn)
        if conn.is_connected:
            await conn.disconnect(nowait=True)  # closes without suspending, so a cancellation cannot stop it

    def _reached_replica(self) -> None:
        """Where the last exchange's connection reached a replica (READONLY), so may every other made
        to this address before: each is closed, and the next ones are made to wherever it leads now."""
        idle, self._idle = self._idle, []
        for wire in idle:
            self._drop(wire.conn)
        keep(self._closing, _disconnect_pool(self._pool))

    def _drop(self, conn: AbstractConnection) -> None:
        """``_close`` from a callback: the connection is out of use at once, its socket closed by a task."""
        self._open.discard(conn)
        if conn.is_connected:
            keep(self._closing, _disconnect(conn))


def check_writable(options: Mapping[str, Any]) -> None:
    """``ValueError`` naming ``redis_url`` where a client's options (``connection_kwargs``, from the
    URL's query) would make the lane's writes wrong."""
    if str(options.get("encoding", "utf-8")).lower().replace("_", "-") not in ("utf-8", "utf8"):
        # ``pack`` sends str arguments (keys among them) as UTF-8, as the reads' client must.
        raise ValueError(f"redis_url: the service's writes need the UTF-8 encoding, got {options.get('encoding')!r}")
    if options.get("decode_responses"):
        # The log tells a script's refusal by its first byte (``b"!"``): decoded replies would
        # read as success.
        raise ValueError("redis_url: decode_responses is not supported for the service's writes")


def pack(commands: Sequence[Sequence[Any]]) -> bytes:
    """The commands in RESP, packed by hiredis in C. Through redis-py's connection the same packing
    makes a Python pass over every argument and a join per command first: a two-entry group
    commit's script call took 8.8 µs instead of 3.9. Arguments are str (sent as UTF-8), bytes, int
    or float; anything else is a ``DataError``, as with redis-py. A command given as ``bytes`` is
    one already in RESP (the log's appends, ``append_resp.py``): sent as it is."""
    if len(commands) == 1 and type(commands[0]) is bytes:
        return commands[0]  # a group commit's one append, already in RESP: no join, no comprehension
    try:
        return b"".join([c if type(c) is bytes else _pack_command(c if type(c) is tuple else tuple(c))
                         for c in commands])
    except TypeError as exc:
        raise DataError(f"a write command's argument cannot be sent to Redis: {exc}") from None


async def _disconnect(conn: AbstractConnection) -> None:
    with contextlib.suppress(RedisError, OSError):  # a node that is gone: nothing more to close
        await conn.disconnect(nowait=True)


async def _disconnect_pool(pool: ConnectionPool) -> None:
    """Every connection of ``pool`` closed, in use or idle (each connects again when next used)."""
    with contextlib.suppress(RedisError, OSError):  # a node that is gone: nothing more to close
        await pool.disconnect()


def _read_only(replies: Any) -> bool:
    """Whether an exchange's replies hold a READONLY refusal. A loop, not ``any`` over a generator:
    this runs on every group commit's replies."""
    if type(replies) is list:
        for reply in replies:
            if isinstance(reply, ReadOnlyError):
                return True
    return False


def _hand(done: Done, result: Any) -> None:
    """``result`` handed to a begun exchange's ``done``, from the connection's protocol."""
    try:
        done(result)
    except Exception:  # a bug in ``done``: the connection's protocol must not die of it
        log.exception("a write's reply could not be handed on")


def _settle(fut: asyncio.Future[list[Any]], result: Any) -> None:
    """An exchange's end, for the ``exchange`` waiting on ``fut`` (unless it gave up: cancelled)."""
    if fut.done():
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)
