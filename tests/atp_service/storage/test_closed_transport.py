"""A connection of the service's Redis Cluster client that the network reset while it sat idle (a proxy's or load
balancer's cut, a peer that aborted it), on uvloop, the loop ``atp-service serve`` runs on: the next command sent on it
fails as Redis unreachable (redis-py's ``ConnectionError``, one of ``STORAGE_ERRORS``), and the one after is answered.

uvloop closes a transport whose read failed (the reset) and raises ``RuntimeError`` (``unable to perform operation on
<TCPTransport closed=True ...>; the handler is closed``) at a write on it; redis-py (8.1) maps only ``OSError`` and
timeouts of a send to its own errors, and a cluster node hands out its free connections unchecked. Every caller that
tells a Redis fault from a bug by ``STORAGE_ERRORS`` (the balance's route reads, lease renewals, the intake's reads and
acks, the channel writes) took it for a bug."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
import redis
import uvloop
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from atp_service.storage.clients import _closed_transport_fails, _ClosedTransportFails, _Cluster, close_any, connect_any
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.embedded_cluster import EmbeddedCluster
from tests.waiting import until

KEYS = [f"t:closed:{i}" for i in range(12)]
"""Keys of every primary's slots."""


class ResettingProxy:
    """A TCP forwarder in front of one cluster node; ``reset`` aborts every client-side connection (an RST: a
    connection cut by the network, not closed by Redis)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.clients: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def reset(self) -> None:
        for writer in self.clients:
            if (sock := writer.get_extra_info("socket")) is not None and not writer.transport.is_closing():
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
        self.clients.clear()

    async def close(self) -> None:
        self.reset()
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.clients.append(writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pipe(source, sink))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            while data := await source.read(65536):
                sink.write(data)
        sink.close()


async def _reset_then_asked(cluster: EmbeddedCluster) -> list[str]:
    proxies = {node.port: ResettingProxy(node.port) for node in cluster.primaries}
    ports = {port: await proxy.start() for port, proxy in proxies.items()}
    remap = {("127.0.0.1", port): ("127.0.0.1", other) for port, other in ports.items()}
    client: Any = _Cluster.from_url(cluster.url, socket_timeout=2.0, socket_connect_timeout=2.0,
                                    retry=Retry(NoBackoff(), 0), address_remap=lambda at: remap.get(at, at))
    seen: list[str] = []
    try:
        await client.mset_nonatomic(dict.fromkeys(KEYS, b"1"))
        for ask in (lambda: client.get(KEYS[0]), lambda: client.mget_nonatomic(KEYS)):
            await asyncio.gather(*(client.get(key) for key in KEYS))  # a free connection on every node
            free = [conn for node in client.get_nodes() for conn in node._free if conn.is_connected]
            for proxy in proxies.values():
                proxy.reset()
            await until(lambda stale=free: all(c._writer.transport.is_closing() for c in stale), "every reset seen")
            try:
                await ask()
                seen.append("answered")
            except STORAGE_ERRORS as exc:
                seen.append(f"storage fault: {type(exc).__name__}")
            except RuntimeError as exc:
                seen.append(f"RuntimeError: {exc}")
            for _ in free:  # then answered, on a connection made again: at worst each stale one fails once, as such
                with contextlib.suppress(RedisConnectionError):
                    assert await client.get(KEYS[0]) == b"1"
                    break
            else:
                seen.append("never answered again")
    finally:
        await close_any(client)
        for proxy in proxies.values():
            await proxy.close()
    return seen


def test_a_command_on_a_connection_reset_while_idle_is_a_storage_fault(cluster: EmbeddedCluster) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        seen = runner.run(_reset_then_asked(cluster))
    assert seen == ["storage fault: ConnectionError"] * 2, seen


async def _sent_on(transport_open: bool) -> BaseException:
    class Failing(Connection):
        async def _send_packed_command(self, command: Any) -> None:
            raise RuntimeError("a bug of the client")

    conn = _closed_transport_fails(Failing)(host="127.0.0.1", port=1)
    ours, peer = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    if not transport_open:
        writer.transport.abort()
    conn._reader, conn._writer = reader, writer
    try:
        with pytest.raises(Exception) as raised:
            await conn.send_packed_command(b"PING\r\n", check_health=False)
    finally:
        writer.close()
        peer.close()
    return raised.value


async def test_a_runtime_error_of_a_send_on_an_open_connection_is_not_taken_for_a_storage_fault() -> None:
    """Only the write on a transport already closed is mapped: any other ``RuntimeError`` is a bug, told as one."""
    assert type(await _sent_on(transport_open=True)) is RuntimeError
    assert isinstance(await _sent_on(transport_open=False), RedisConnectionError)


class _Renamed(Connection):
    """A redis-py whose send under the socket timeout no longer goes through ``_send_packed_command`` (renamed)."""

    async def _send_packed(self, command: Any) -> None:
        await super()._send_packed_command(command)

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        await self._send_packed([command] if isinstance(command, bytes) else command)


class _Gone(_Renamed):
    """A redis-py with no ``_send_packed_command`` at all, its send naming it still (say, a property now)."""

    _send_packed_command = None  # type: ignore[assignment]

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        await self._send_packed_command(command)  # type: ignore[misc]


@pytest.mark.parametrize("base", [_Renamed, _Gone])
def test_a_redis_py_whose_send_passes_the_mapping_by_fails_loudly(base: type) -> None:
    """redis-py (``>=7.0``, not pinned) may rename or stop calling the private method the mapping overrides: the
    override would then do nothing, the bug back unseen. The client's making (the service's start) fails instead."""
    with pytest.raises(RuntimeError, match="_send_packed_command"):
        _closed_transport_fails(base)


def test_a_refusal_names_the_redis_py_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect: the refusal said "install a redis-py this release supports", naming none (``>=7.0`` is not pinned): an
    operator whose start failed was not told which one. It names the one ``requirements/service.lock`` pins (the one
    tested) beside the one installed."""
    locked = re.search(r"^redis==([\w.]+)", (Path(__file__).parents[3] / "requirements" / "service.lock").read_text(),
                       re.MULTILINE)
    assert locked is not None
    monkeypatch.setattr(redis, "__version__", "99.0.0")
    with pytest.raises(RuntimeError) as refused:
        _closed_transport_fails(_Gone)
    assert "redis-py 99.0.0" in str(refused.value) and f"redis=={locked[1]}" in str(refused.value)


@pytest.mark.parametrize(("url", "cluster"), [("redis://localhost:1", False), ("rediss://localhost:1", False),
                                              ("unix:///tmp/no.sock", False), ("redis://localhost:1", True),
                                              ("rediss://localhost:1", True)])
async def test_the_installed_redis_py_is_not_refused_for_any_connection_kind(url: str, cluster: bool) -> None:
    """A guard, not a defect: every connection class a URL or a cluster picks (TCP, TLS, unix socket; the service's,
    the log's, the publishers' clients all come from ``connect_any``) passes the check on the installed redis-py,
    and a send on it goes through the override."""
    client = connect_any(url, 1.0, cluster=cluster)
    made = client.nodes_manager.connection_kwargs["connection_class"] if cluster else \
        client.connection_pool.connection_class
    assert issubclass(made, _ClosedTransportFails)
    await close_any(client)
