"""A slot of the shared Redis Cluster moved by hand, in the steps of a reshard (``CLUSTER SETSLOT
MIGRATING/IMPORTING``, ``MIGRATE``, ``SETSLOT NODE``, as ``redis-cli --cluster reshard`` does); the
``moves`` fixture (``tests/conftest.py``) finishes every move a test began."""

from __future__ import annotations

from typing import Any

import redis

from atp_service.storage.embedded_cluster import EmbeddedCluster


class SlotMove:
    """One slot moved by hand from primary ``source`` to ``target`` (ports), in the steps of a reshard."""

    def __init__(self, cluster: EmbeddedCluster, slot: int, source: int, target: int) -> None:
        self.cluster, self.slot, self.source, self.target = cluster, slot, source, target

    @staticmethod
    def _on(port: int, *command: str | int) -> Any:
        with redis.Redis(host="127.0.0.1", port=port) as client:
            return client.execute_command(*command)

    def _id(self, port: int) -> str:
        return str(self._on(port, "CLUSTER", "MYID"), "ascii")

    def begin(self) -> None:
        self._on(self.target, "CLUSTER", "SETSLOT", self.slot, "IMPORTING", self._id(self.source))
        self._on(self.source, "CLUSTER", "SETSLOT", self.slot, "MIGRATING", self._id(self.target))

    def move_keys(self) -> None:
        """Every key of the slot moved to ``target``, the slot still migrating: the source answers ASK."""
        keys = self._on(self.source, "CLUSTER", "GETKEYSINSLOT", self.slot, 1000)
        assert isinstance(keys, list)
        for key in keys:
            self._on(self.source, "MIGRATE", "127.0.0.1", self.target, key, 0, 5000)

    def finish(self) -> None:
        """Every key moved, then the slot assigned to ``target`` on every primary."""
        self.move_keys()
        for node in self.cluster.primaries:
            self._on(node.port, "CLUSTER", "SETSLOT", self.slot, "NODE", self._id(self.target))
