"""atpctl's Redis Cluster client (``events publish --redis-cluster``): redis-py's, its command table read from
whichever node answers. Needs the redis package (``atp-client[redis]``)."""

from __future__ import annotations

from typing import Any

from redis._parsers.commands import AsyncCommandsParser
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.cluster import PRIMARY
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError


class Cluster(RedisCluster):
    """redis-py's cluster client, reading its command table as ``_CommandTable`` does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands_parser = _CommandTable(self.nodes_manager)


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
        for candidate in dict.fromkeys(found for found in asked if found is not None):  # (a node: by its name)
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
