"""atpctl's Redis Cluster client (``events publish --redis-cluster``): redis-py's, its command table read from
whichever node answers, an ASK followed to a node serving no slot yet. Needs the redis package
(``atp-client[redis]``)."""

from __future__ import annotations

import asyncio
from typing import Any

from redis._parsers.commands import AsyncCommandsParser
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.cluster import PRIMARY
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError

ASKED_NODES_MOST = 8
"""Nodes an ASK named that no slot map does, kept (``Cluster.get_node``); past it, the one asked first is let go."""


class Cluster(RedisCluster):
    """redis-py's cluster client, reading its command table as ``_CommandTable`` does, and following an ASK (the
    stream's slot migrating, the stream on the importing node already) to a node no slot map names yet: one an
    operator just added, importing its first slot. redis-py looked the node up in its slot map, found none, and the
    entry ended ``AttributeError`` ('NoneType' object has no attribute 'execute_command'), for as long as the slot
    migrated. ``ASKING`` and the command go on one connection: atpctl sends one command at a time, so the node holds
    one connection, the one ``ASKING`` just freed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._asked: dict[str, ClusterNode] = {}  # by the ASK's name for it, the most recently made last
        self._closing: set[asyncio.Future[None]] = set()  # those let go, closing (``aclose`` waits for them)
        super().__init__(*args, **kwargs)
        self.commands_parser = _CommandTable(self.nodes_manager)

    def get_node(self, host: str | None = None, port: int | None = None,
                 node_name: str | None = None) -> ClusterNode | None:
        found = super().get_node(host, port, node_name)
        if found is not None or host is not None or port is not None or not node_name:
            return found
        found = self._asked.get(node_name)  # redis-py's lookup of an ASK's node: by its name alone
        if found is None:
            address, _, port_text = node_name.rpartition(":")
            found = ClusterNode(address, int(port_text), PRIMARY, **self.nodes_manager.connection_kwargs)
            self._asked[node_name] = found
            for older in list(self._asked)[:-ASKED_NODES_MOST]:
                closing = asyncio.ensure_future(self._asked.pop(older).disconnect())
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
        return found

    async def aclose(self) -> None:
        """Every connection closed, those of the nodes an ASK named too."""
        await super().aclose()
        asked, self._asked = self._asked, {}
        await asyncio.gather(*(node.disconnect() for node in asked.values()), *self._closing, return_exceptions=True)


class _CommandTable(AsyncCommandsParser):
    """The command table (``COMMAND``: where each command's keys are), read once, from the first node that answers:
    redis-py read it at every read of the slot map, the first command's too, from its default node alone (the
    primary of the first slots), and a read that failed failed the command: with that node hung nothing was
    published, whichever primary held the stream. Asked first of the node the map was just read from: ``--timeout``
    bounds the first command as a whole (the map, the table, the entries), and a timeout spent on a hung default
    node left nothing for the rest. The table is the cluster's Redis's and changes only with it; a command it lacks
    has it read again (redis-py's ``get_keys``)."""

    def __init__(self, nodes: Any) -> None:
        super().__init__()
        self._nodes = nodes  # the client's NodesManager: the nodes to ask, and its default node

    async def initialize(self, node: ClusterNode | None = None) -> None:
        """The table read, first from the node the slot map was just read from (the URL's, at the first read), then
        ``node`` (the default node; none: the one asked last), then every other node, primaries first, each bounded
        by the socket timeout (``--timeout``). One that does not answer is asked last from then on (the default node no
        longer). Kept, as read already, at a read of the slot map (``node`` given)."""
        if node is not None and self.commands:
            self.node = node  # where a movable-key command's keys are asked (``COMMAND GETKEYS``)
            return
        seed = next(iter(self._nodes.startup_nodes.values()), None) if node is not None else None
        asked = [seed, node or getattr(self, "node", None), *self._nodes.get_nodes_by_server_type(PRIMARY),
                 *self._nodes.nodes_cache.values()]
        failed: Exception | None = None
        by_name: dict[str, ClusterNode] = {}  # each once, where first named (by name: redis-py 7.0's are not hashable)
        for found in asked:
            if found is not None:
                by_name.setdefault(found.name, found)
        for candidate in by_name.values():
            try:
                await super().initialize(candidate)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:  # not answering: the next one
                failed = failed or exc
                moved_last = getattr(self._nodes, "move_node_to_end_of_cached_nodes", None)  # (a newer redis-py)
                if moved_last is not None:
                    moved_last(candidate.name)
                continue
            self.node = node or candidate
            if failed is not None and candidate.server_type == PRIMARY and node is not None:  # the default failed
                self._nodes.default_node = self.node = self._nodes.nodes_cache.get(candidate.name, candidate)
            return
        raise failed or RedisClusterException("no node of the cluster to read the command table from")
