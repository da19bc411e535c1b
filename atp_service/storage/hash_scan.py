"""HSCAN calls of a hash on one connection of their own, each page told with the server life it came
from (``HashScan``).

An HSCAN cursor holds within one Redis server's life only: a restart (from its RDB or AOF) or a failover
(a replica promoted, the hash moved to another node) builds the hash's table again under another hash
seed, and a cursor kept across it, read against the new table, passes over fields it never returned
(about a tenth of a 1,000-field hash after its first page). redis-py makes a connection the server closed
again without a word, through whichever connection of its pool a call takes. So a sweep whose calls go
through the pool cannot tell it spanned two servers; one whose calls all go on one connection can: a
connection that was never made again talked to one server process all along (a restarted server, or a
new primary reached at the same address, is reached through a connection made again). ``life`` changes
each time the connection is made (again), or another is taken (another node of a cluster): a sweep
that saw one life throughout saw every field present throughout; else it goes again from cursor 0.
No command beyond ``HSCAN`` is sent (and, on a cluster whose slot migrates, the ``ASKING`` before it that
redis-py's own redirections send too), so a Redis user needs no permission more.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import AskError, MovedError
from redis.exceptions import ConnectionError as RedisConnectionError


class HashScan:
    """``hscan`` pages of one hash at a time (each caller's sweep keeps its own cursor and the life it
    began in), on a connection held until ``aclose``: of one Redis's pool, or of the cluster node that
    serves the hash's slot. Through any other client (a wrapper of one), the client's own ``hscan``,
    every page of life 0: no change of server is seen there."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._held: AbstractConnection | None = None
        self._node: Any = None
        """The cluster node the held connection is of (None: one Redis's pool, or none held)."""
        self._asked: tuple[str, Any] | None = None
        """(the node that answered ASK, the node it named): the hash's slot migrating, the hash moved there already.
        Asked there (``ASKING`` before each ``HSCAN``) for as long as the slot map names the former for its slot."""
        self._lock = asyncio.Lock()
        self.life = 0
        """Changed each time the held connection is made (again) or another is taken: the server may differ."""

    async def hscan(self, key: str, cursor: int, count: int) -> tuple[int, dict[Any, Any], int]:
        """One ``HSCAN key cursor COUNT count``: the cursor after, the fields and values, and the life of the
        connection it came by. A cursor is good only for a call of the life its sweep began in (cursor 0)."""
        if not isinstance(self._client, (aioredis.Redis, aioredis.RedisCluster)):
            after, found = await self._client.hscan(key, cursor, count=count)
            return int(after), found, 0
        async with self._lock:
            redirected: AskError | None = None
            for _ in range(3):  # a cluster's MOVED: the slot map learnt, then its node asked; ASK: the node named
                conn = await self._connection(key)
                try:
                    if self._asked is not None and self._node is self._asked[1]:
                        await conn.send_command("ASKING")  # allows the next command of this connection alone
                        await conn.read_response()
                    await conn.send_command("HSCAN", key, cursor, "COUNT", count)
                    reply = await conn.read_response()
                except MovedError as exc:  # the slot moved to another node: its hash is another table there
                    redirected = exc
                    self._asked = None
                    await self._release()
                    cluster: Any = self._client
                    await cluster.nodes_manager.move_slot(exc)
                    continue
                except AskError as exc:  # its slot migrating, the hash moved already: asked where it is now
                    redirected = exc
                    self._asked = self._asking(exc)
                    continue
                after, flat = reply
                return int(after), dict(zip(flat[::2], flat[1::2], strict=True)), self.life
            raise redirected or MovedError(f"{key}: moved again while its node was learnt")

    def _asking(self, redirection: AskError) -> tuple[str, Any]:
        """(the node that answered ``redirection``, the node it names), raising it where the client knows no such
        node (redis-py's own cluster client, before the node serves a slot: ``clients._Cluster`` knows any)."""
        client: Any = self._client
        target = client.get_node(node_name=f"{redirection.host}:{redirection.port}")
        if self._node is None or target is None:
            raise redirection
        return self._node.name, target

    async def aclose(self) -> None:
        """The held connection given back to its pool (or node)."""
        async with self._lock:
            await self._release()

    async def _connection(self, key: str) -> AbstractConnection:
        """The held connection: taken where none is (or the hash's slot is served by another node now)."""
        client: Any = self._client
        node: Any = None
        if isinstance(client, aioredis.RedisCluster):
            await client.initialize()  # its slot map, read where it is not yet (or must be again)
            node = client.get_node_from_key(key)  # raises where no node serves its slot
            if self._asked is not None:  # asked where the hash is for as long as the slot map names the node asking
                node = self._asked[1] if self._asked[0] == node.name else node
                self._asked = self._asked if node is self._asked[1] else None
            if self._held is not None and (self._node is None or self._node.name != node.name):
                await self._release()
        if self._held is None:
            conn = node.acquire_connection() if node is not None else await client.connection_pool.get_connection()
            conn.register_connect_callback(self._connected)
            self._held, self._node, self.life = conn, node, self.life + 1
        held = self._held
        try:  # as a pool checks one it hands out: data unread, or closed by a server gone, made again (a new life)
            stale = held.is_connected and await held.can_read()
        except (RedisConnectionError, OSError):
            stale = True
        if stale:
            await held.disconnect()
        return held

    def _connected(self, connection: AbstractConnection) -> None:
        """The held connection made again: perhaps to another server (a restart, a failover)."""
        self.life += 1

    async def _release(self) -> None:
        held, node, self._held, self._node = self._held, self._node, None, None
        if held is None:
            return
        cast(Any, held).deregister_connect_callback(self._connected)  # untyped in redis-py
        if node is not None:
            node.release(held)
        else:
            await self._client.connection_pool.release(held)
