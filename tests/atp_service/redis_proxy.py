"""A TCP proxy in front of Redis that makes a late landing on demand (R7: a write in doubt).

While ``hold`` names markers (e.g. the SHA1 of a script), the first command on a connection whose
bytes contain one — and whatever follows on that connection — is kept instead of forwarded. The
client times out and closes its end; the proxy keeps its connection to Redis open, so ``land``
can deliver the command later, after the client settled it: what a delayed TCP packet does. (A
Redis ``CLIENT PAUSE WRITE`` cannot do this: Redis drops a paused command whose client closed the
connection, and the service's client closes it when a reply times out.) ``drop`` discards what was
held: the write never reaches Redis. With ``hold(..., reset=True)`` the client's connection is
closed as its command is held: its answer is lost at once, whatever the client's timeout, and
no other call has to be given a timeout short enough for the held one to end soon; ``cut`` does the
same for one command already held, when the test says so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest

from atp_service import EmbeddedRedis
from tests.waiting import until


class Held:
    """One connection whose command the proxy holds."""

    def __init__(self, upstream: asyncio.StreamWriter, marker: bytes, client: asyncio.StreamWriter) -> None:
        self.upstream, self.marker, self.client = upstream, marker, client
        self.data = bytearray()
        self.replies = bytearray()


class HoldingProxy:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.markers: tuple[bytes, ...] = ()
        self.reset = False
        self.held: list[Held] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.url = ""
        """The Redis URL to give the service, once listening (``start``)."""

    async def start(self) -> str:
        """Listen; returns the Redis URL to give the service (``url``)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"redis://127.0.0.1:{port}/0"
        return self.url

    def hold(self, *markers: bytes, reset: bool = False) -> None:
        """Hold commands containing one of ``markers`` from now on (none: forward everything again);
        ``reset``: and close the client's connection as one is held (a reset connection: no answer)."""
        self.markers, self.reset = markers, reset

    async def land(self, held: Held, timeout_s: float = 10.0) -> bytes:
        """Deliver a held command now, late, and return Redis's reply to it."""
        self.held.remove(held)
        data, held.data = bytes(held.data), bytearray()
        held.upstream.write(data)
        await held.upstream.drain()
        await until(lambda: held.replies.endswith(b"\r\n"), "answered: the landed command", timeout_s)
        held.upstream.close()
        return bytes(held.replies)

    def cut(self, held: Held) -> None:
        """Close the client's connection of a held command: its answer is lost now, on the test's cue
        (a reset connection), whatever the client's timeout; the command stays held (``land``, ``drop``)."""
        held.client.close()

    def drop(self) -> None:
        """Discard every held command: its connection to Redis closes, the command never arrives."""
        for held in self.held:
            held.upstream.close()
        self.held.clear()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            return
        self._writers += [writer, up_writer]
        box: list[Held] = []
        self._spawn(self._up(reader, up_writer, box, writer))
        self._spawn(self._down(up_reader, writer, box))

    async def _up(self, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter, box: list[Held],
                  client: asyncio.StreamWriter) -> None:
        """Client to Redis: forward, or keep once a held command began."""
        tail = b""
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                if not box:
                    seen = tail + chunk
                    for marker in self.markers:
                        if marker in seen:
                            box.append(Held(upstream, marker, client))
                            self.held.append(box[0])
                            if self.reset:
                                client.close()
                            break
                if box:
                    box[0].data += chunk
                    continue
                upstream.write(chunk)
                await upstream.drain()
                tail = (tail + chunk)[-64:]
        if not box:  # the client closed: so does the proxy, unless it holds a command of it
            upstream.close()

    async def _down(self, upstream: asyncio.StreamReader, writer: asyncio.StreamWriter, box: list[Held]) -> None:
        """Redis to client: forward (a reply to a landed command is kept for ``land``)."""
        with contextlib.suppress(OSError):
            while data := await upstream.read(65536):
                if box:
                    box[0].replies += data
                if not writer.is_closing():
                    writer.write(data)
        writer.close()


@pytest.fixture
async def proxy(redis_server: EmbeddedRedis, redis_url: str) -> AsyncIterator[HoldingProxy]:
    """A ``HoldingProxy`` in front of the session's Redis (a clean keyspace: ``redis_url``), listening; after the
    test it holds nothing more and closes. Used by name: a test module imports it."""
    held = HoldingProxy("127.0.0.1", redis_server.port)
    await held.start()
    try:
        yield held
    finally:
        held.hold()
        await held.close()
