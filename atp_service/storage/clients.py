"""The clients the service and the publishers talk to Redis through: never retrying on their own,
commands packed by hiredis (``nodes.py`` makes its write lanes' connections with them)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Coroutine
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis._parsers import AsyncCommandsParser
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.cluster import PRIMARY
from redis.commands.core import AsyncScript
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig

ASKED_NODES_MOST = 8
"""Nodes asked after an ASK that keep free connections and are remembered (``_Cluster``); those asked less recently
keep none, and are forgotten once none of their connections is in use (made again if asked again): nodes come and go
over a cluster's life (moved, scaled out and in)."""
ASKED_IDLE_MOST = 2
"""Free connections an ASK's node keeps (``_AskedNode``): a burst asked at once opens one each, closed once free."""
CLOSING_WAIT_MOST_S = 5.0
"""How long a cluster client's close (``_Cluster.aclose``) waits for the connections it let go in the background to
close (a disconnect is bounded by its connect timeout already); those still closing then are cancelled, not left
pending."""

REDIS_PY_LOCKED = "8.1.0"
"""The redis-py ``requirements/service.lock`` pins, tested: named where an installed one is refused at start."""


def connect(url: str, timeout_s: float) -> aioredis.Redis:
    """A client that never retries on its own: a blind retry of an append could log it twice.
    Its commands are packed by hiredis (see ``_HiredisPacking``). A connection whose command was
    refused READONLY is closed (``retry_on_error``, with no retry): it reaches a replica — a
    failover behind this address — and the next one is made to wherever the address leads now.
    The asyncio ``Retry``: redis-py's asyncio client calls a synchronous one's ``call_with_retry``
    with a coroutine function, which never fails inside it, so it never closes the connection."""
    client = aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        retry_on_error=[ReadOnlyError],
        health_check_interval=0,
        maint_notifications_config=_no_maint_notifications(),
    )
    pool = client.connection_pool
    pool.connection_class = _hiredis_packing(_closed_transport_fails(pool.connection_class))
    return client


class _HiredisPacking:
    """redis-py's asyncio connections pack commands in Python, argument by argument (its sync ones
    use hiredis): a 1,000-id XACK or a group commit of many entries cost ~0.5 µs per argument.
    hiredis (already the reply parser) packs them in C, about 4x faster."""

    _serializer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        packed: list[bytes] = self._serializer.pack(*args)
        return packed


_packing_classes: dict[type, type] = {}
_failing_classes: dict[type, type] = {}


class _ClosedTransportFails:
    """A send on a connection whose transport is closed already fails as redis-py's ``ConnectionError`` (Redis
    unreachable: ``STORAGE_ERRORS``), not ``RuntimeError``. uvloop closes a transport whose read failed (the network
    reset it while it sat idle: a proxy's or load balancer's cut, a peer that aborted it) and raises ``RuntimeError``
    (``... the handler is closed``) at a write on it (uvloop #506); redis-py (8.1) maps only ``OSError`` and timeouts of
    a send, and a cluster node hands out its free connections unchecked. Every caller took it for a bug (the balance's
    route reads, the intake's stream reads and acks, the channel feeds), and a cluster node's other stale connections
    failed in turn: only a ``ConnectionError`` makes redis-py let a node's free connections go. (The write lanes'
    scripts never meet it: ``Wire`` fails any write that raises as a connection error.) Nothing of the command left
    (uvloop checks before writing a byte); whoever sent it treats it as in doubt all the same, as after any connection
    error (R7)."""

    _writer: Any  # redis-py's connection's (the class this is mixed into)
    host: str
    port: int

    async def _send_packed_command(self, command: Any) -> None:  # redis-py 8.1's send under its socket timeout
        writer = self._writer  # (redis-py clears it as it disconnects after a failed send)
        try:
            await super()._send_packed_command(command)  # type: ignore[misc]
        except RuntimeError as exc:
            if writer is None or not writer.transport.is_closing():
                raise  # not a closed transport's: a bug, told as one
            raise RedisConnectionError(f"Error writing to {self.host}:{self.port}: the connection was closed "
                                       f"({exc})") from exc


def _closed_transport_fails(base: type) -> type:
    """``base`` (a connection class of redis-py's) whose send on a closed transport fails ``ConnectionError``. Raises
    where ``base``'s send no longer goes through ``_send_packed_command`` (redis-py's private method, its version not
    pinned): the override would do nothing, and the bug come back unseen; the client's making (a start) fails."""
    if base not in _failing_classes:
        send = getattr(getattr(base, "send_packed_command", None), "__code__", None)
        if not inspect.iscoroutinefunction(getattr(base, "_send_packed_command", None)) or send is None or \
                "_send_packed_command" not in send.co_names:
            raise RuntimeError(f"redis-py {redis.__version__}: {base.__qualname__}.send_packed_command no longer sends "
                               "through _send_packed_command, which atp_service.storage.clients overrides (a send on "
                               "a closed uvloop transport told as a connection error): install "
                               f"redis=={REDIS_PY_LOCKED} (requirements/service.lock, the one tested)")
        _failing_classes[base] = type(f"Checked{base.__name__}", (_ClosedTransportFails, base), {})
    return _failing_classes[base]


def _hiredis_packing(base: type) -> type:
    """``base`` (TCP, TLS or unix-socket connection, as the URL chose) with hiredis packing."""
    if base not in _packing_classes:
        _packing_classes[base] = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})
    return _packing_classes[base]


def connect_any(url: str, timeout_s: float, *, cluster: bool = False) -> Any:
    """A client for single-key commands: of one Redis, or of a Redis Cluster (routed by key).
    Neither retries on its own (``connect``): redis-py's cluster client sends a command that timed
    out again, up to ten times by default, so an append whose first try only waited on a stalled
    primary landed twice, and a call bounded by ``timeout_s`` took eleven times as long. After a
    connection error it still learns the slots again before its next command; redirections
    (MOVED/ASK) are followed as before, ASK as redis-py does not (``_Cluster``)."""
    if not cluster:
        return connect(url, timeout_s)
    return _Cluster.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                          retry=Retry(NoBackoff(), 0),
                                          maint_notifications_config=_no_maint_notifications())


class _Cluster(aioredis.RedisCluster):
    """redis-py's cluster client, following an ASK redirection (its slot migrating, the key on the importing node
    already) to a node of its own for each node named (``_AskedNode``), made where none is. redis-py (8.1) looked the
    node up in its slot map, which names no node that does not serve a slot yet: a node an operator adds, importing its
    first slot, was None, and the command failed ``AttributeError`` ('NoneType' object has no attribute ...), which no
    caller takes for Redis away — the service's input stream reader and owner check ended, and the service stopped."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._asked: dict[str, _AskedNode] = {}  # the most recently asked last
        self._closing: set[asyncio.Future[None]] = set()  # connections let go in the background, closing (aclose)
        self._failed_last: str | None = None  # the node that last did not answer a command (``initialize``)
        super().__init__(*args, **kwargs)
        self.commands_parser = _CommandTable(self.nodes_manager)
        made = self.nodes_manager.connection_kwargs  # each node's connections: a send on a closed one fails as such
        made["connection_class"] = _closed_transport_fails(made.get("connection_class", Connection))
        for node in self.nodes_manager.startup_nodes.values():
            node.connection_class = made["connection_class"]

    def get_node(self, host: str | None = None, port: int | None = None,
                 node_name: str | None = None) -> ClusterNode | None:
        """By ``node_name`` alone (redis-py's lookup of an ASK's node, ``_execute_command``): that node's
        ``_AskedNode``; else as redis-py finds it."""
        if host is None and port is None and node_name:
            node = self._asked.pop(node_name, None)
            if node is None:
                host, _, port_text = node_name.rpartition(":")
                node = _AskedNode(host, int(port_text), PRIMARY, **self.nodes_manager.connection_kwargs)
                node.remembered_in, node.asked_as = self._asked, node_name  # (``localhost``: named 127.0.0.1)
                node.closing_in = self._closing
            self._asked[node_name] = node
            for older in list(self._asked.values())[:-ASKED_NODES_MOST]:  # asked less recently: none kept free
                older.close_free(0)
                if not older._connections:  # none in use: forgotten (one per address ever asked, kept for good)
                    del self._asked[older.asked_as]
                    self._closing |= older._background_tasks
                    for task in older._background_tasks:
                        task.add_done_callback(self._closing.discard)
            return node
        return super().get_node(host, port, node_name)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """The slot map read first where none is known (a client made now, or closed by redis-py: after a
        CLUSTERDOWN, every few MOVED): redis-py (8.1) sent such a command to a primary drawn at random (as one of no
        key), redirected from there, so with that one hung it failed, one time in as many primaries."""
        if self._initialize and self.get_default_node() is None:
            await self.initialize()
        return await super().execute_command(*args, **kwargs)

    async def initialize(self, additional_startup_nodes_info: Any = None,
                         last_failed_node_name: str | None = None) -> Any:
        """The slot map read, the node that last did not answer a command asked last: redis-py (8.1) asked the nodes
        in a random order, and put the one that failed last only within its own retries (none here): a read after a
        command a hung node did not answer asked it first one time in as many nodes, and every command of the client
        waited out the socket timeout behind it (the read holds a lock)."""
        return await super().initialize(additional_startup_nodes_info, last_failed_node_name or self._failed_last)

    async def _execute_command(self, target_node: ClusterNode, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super()._execute_command(target_node, *args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as exc:  # not answering: asked last (``initialize``)
            self._failed_last = getattr(exc, "last_failed_node_name", None) or self._failed_last
            raise

    async def _determine_slot(self, command: str, *args: Any) -> int:
        """XREAD and XREADGROUP routed by the streams they name, read here: redis-py (8.1) asked one node (the one
        it read the command table from) ``COMMAND GETKEYS`` before every such read, so with that node hung every
        stream read failed, whichever node held the stream — the input streams, the channel feeds and their waits
        stalled for as long as one primary did not answer (liveness), and a MOVED did not change which node it was."""
        streams = streams_named(command, args)
        if streams is None:
            return await super()._determine_slot(command, *args)
        slots = {self.keyslot(stream) for stream in streams}
        if len(slots) != 1:
            raise RedisClusterException(f"{command} - all keys must map to the same key slot")
        return slots.pop()

    def register_script(self, script: Any) -> Any:  # (an AsyncScript: redis-py types it as the sync one)
        """A script loaded on the node of its keys when that node lacks it (``_LoadedWhereRun``)."""
        return _LoadedWhereRun(self, script)

    async def aclose(self) -> None:
        """Every connection closed, those to the nodes asked after an ASK too."""
        await super().aclose()
        asked, self._asked = self._asked, {}
        for node in asked.values():  # forgotten: a connection still in use is closed once freed
            node.remembered_in = {}
        await asyncio.gather(*(node.disconnect() for node in asked.values()),
                             *(task for node in asked.values() for task in node._background_tasks),
                             return_exceptions=True)
        # Connections let go in the background, of nodes forgotten too (a caller's, freed after): closed, not left
        # open past the close nor their tasks pending as the loop ends; bounded, the rest cancelled.
        if closing := set(self._closing):
            _, pending = await asyncio.wait(closing, timeout=CLOSING_WAIT_MOST_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


class _CommandTable(AsyncCommandsParser):
    """redis-py's command table (where each command's keys are), read once, from the first node that answers:
    redis-py (8.1) read it again at every read of the slot map (after a connection to any node broke, every few
    MOVED, a CLUSTERDOWN), from one node (the first primary listed, slot 0's), so with that node hung every command
    of the client failed, on every node, for as long as it hung. The table changes only with Redis's version:
    a command it does not name reads it again (``get_keys``)."""

    def __init__(self, nodes_manager: Any) -> None:
        super().__init__()
        self.nodes_manager = nodes_manager

    async def initialize(self, node: ClusterNode | None = None) -> None:
        if node is None:  # a command the table does not name: read again, where it was read
            await super().initialize()
            return
        self.node = node  # (the node asked COMMAND GETKEYS: no command the service sends, streams_named)
        if self.commands:
            return
        asked = [node, *(other for other in self.nodes_manager.nodes_cache.values() if other is not node)]
        for each in asked[:-1]:  # a node that does not answer: the next
            with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
                await super().initialize(each)
                return
        await super().initialize(asked[-1])


_READ_OPTIONS = {b"COUNT": 1, b"BLOCK": 1, b"NOACK": 0}
"""XREAD/XREADGROUP's options before ``STREAMS``, each with the arguments it takes (``streams_named``)."""


def streams_named(command: Any, args: tuple[Any, ...]) -> list[Any] | None:
    """The streams an XREAD or XREADGROUP reads (the first half of what follows ``STREAMS``); None for any other
    command, or one whose arguments are not read here (redis-py finds its keys then)."""
    name = _upper(command)
    if name == b"XREADGROUP" and len(args) > 2 and _upper(args[0]) == b"GROUP":
        at = 3  # past GROUP <group> <consumer>
    elif name == b"XREAD":
        at = 0
    else:
        return None
    while at < len(args) and (option := _upper(args[at])) in _READ_OPTIONS:
        at += 1 + _READ_OPTIONS[option]
    rest = args[at + 1:]
    if at >= len(args) or _upper(args[at]) != b"STREAMS" or not rest or len(rest) % 2:
        return None
    return list(rest[:len(rest) // 2])


def _upper(arg: Any) -> bytes:
    return (arg.encode() if isinstance(arg, str) else arg if isinstance(arg, bytes) else b"").upper()


class _LoadedWhereRun(AsyncScript):
    """A script a node lacks (NOSCRIPT: a node restarted, a replica promoted, a node new to the cluster) sent whole
    (EVAL) to that node, which keeps it: redis-py (8.1) loaded it on every primary first (``SCRIPT LOAD``), so with
    one primary hung, the first run of a script on any other node failed until that one answered (liveness)."""

    async def __call__(self, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        client = self.registered_client if client is None else client
        if isinstance(client, Pipeline):
            return await super().__call__(keys, args, client)
        named = (*(keys or ()), *(args or ()))
        try:
            return await client.evalsha(self.sha, len(keys or ()), *named)
        except NoScriptError:
            return await client.eval(self.script, len(keys or ()), *named)


class _AskedNode(ClusterNode):
    """A node as asked after an ASK redirection: ``ASKING``, then the command, on one connection (ASKING allows
    the next command of its connection alone). The connection freed last is taken first, so the command takes
    the one ``ASKING`` just freed: nothing runs between them (no await suspends there)."""

    __slots__ = ("asked_as", "closing_in", "remembered_in")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.remembered_in: dict[str, _AskedNode] = {}
        """The client's nodes asked (``_Cluster._asked``): one forgotten there (a caller held it meanwhile, a
        connection taken after, or the client closed) keeps no connection free: none is left open."""
        self.asked_as = self.name
        """Its key there: the ASK's name for it, which ``name`` may spell otherwise (redis-py names a node
        ``localhost`` by its address)."""
        self.closing_in: set[asyncio.Future[None]] = set()
        """The client's connections closing in the background (``_Cluster._closing``), which its close waits for:
        this node's too, once forgotten (a connection a caller took after, freed)."""

    def acquire_connection(self) -> Connection:
        if self._free:
            return self._free.pop()
        return super().acquire_connection()

    def release(self, connection: Connection) -> None:
        """Freed to the right (taken next: ``ASKING``'s by its command); past ``ASKED_IDLE_MOST`` free, the one
        free longest closed (never the one just freed)."""
        super().release(connection)
        self.close_free(ASKED_IDLE_MOST if self.remembered_in.get(self.asked_as) is self else 0)

    def close_free(self, keep: int) -> None:
        """Its free connections past ``keep`` closed, the one free longest first (none in use: no command's)."""
        while len(self._free) > keep:
            idle = self._free.popleft()
            self._connections.remove(idle)
            task = asyncio.ensure_future(_closed(idle.disconnect()))
            self._background_tasks.add(task)
            task.add_done_callback(self._background_tasks.discard)
            self.closing_in.add(task)
            task.add_done_callback(self.closing_in.discard)


async def _closed(disconnect: Awaitable[None]) -> None:
    """A free connection let go, closed in the background: a failure to close one unused changes nothing."""
    with contextlib.suppress(Exception):
        await disconnect


async def close_any(client: Any) -> None:
    """``client`` closed (``connect_any``'s), every connection of a cluster client's nodes included:
    redis-py's cluster client closes nothing while it waits to read the slot map again — after any
    command a node did not answer (the writer's ``CLUSTER NODES`` too) — and left them all open."""
    await client.aclose()
    if isinstance(client, aioredis.RedisCluster):  # closing again is harmless: each connection's disconnect
        await client.nodes_manager.aclose()
        await client.nodes_manager.aclose("startup_nodes")


def _no_maint_notifications() -> MaintNotificationsConfig:
    """Maintenance notifications off. While they are on (redis-py's default, ``auto``), its pool
    hands out an idle connection without checking that the server still holds it open, so the first
    command after a Redis restart fails on a dead socket; the service never retries blindly, so that
    one failure would reach a caller or stall a reader."""
    return MaintNotificationsConfig(enabled=False)


def node_url(url: str, host: str, port: int) -> str:
    """``url`` (credentials, TLS, options) pointed at another node."""
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{host}:{port}" if auth else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def read_map(manager: Any, failed: str) -> Coroutine[Any, Any, None]:
    """``manager``'s read of the slot map again (``NodesManager.initialize``), ``failed`` asked last where redis-py
    takes it (8.0 on: ``last_failed_node_name``); 7.x's takes no argument, its nodes asked in the order it draws — a
    TypeError at each read otherwise, the map never read again."""
    if "last_failed_node_name" in inspect.signature(manager.initialize).parameters:
        return manager.initialize(last_failed_node_name=failed)  # type: ignore[no-any-return]
    return manager.initialize()  # type: ignore[no-any-return]
