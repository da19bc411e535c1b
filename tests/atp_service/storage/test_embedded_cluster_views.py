"""How ``EmbeddedCluster`` reads each node's view of the cluster while it forms, and what a start that
did not form reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from atp_service.storage.embedded_cluster import EmbeddedCluster, SeenNode
from atp_service.storage.embedded_redis import EmbeddedRedis, RedisDidNotStart

MYSELF = "aa 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-8191"
PEER = "bb 127.0.0.1:7001@17001 master - 0 1 2 connected 8192-16383"


class SeenAs(EmbeddedCluster):
    """A cluster (never started) whose every node sees the rows given."""

    def __init__(self, tmp_path: Path, rows: list[str]) -> None:
        super().__init__(tmp_path, primaries=2)
        self.rows = rows

    def _view(self, node: EmbeddedRedis) -> list[SeenNode]:
        return [SeenNode.parse(row) for row in self.rows]


def test_a_row_is_read_with_its_flags_port_and_link() -> None:
    seen = SeenNode.parse("cc 127.0.0.1:7002@17002 slave,fail? bb 5 6 3 disconnected")
    assert (seen.node_id, seen.port, seen.master_id, seen.link) == ("cc", 7002, "bb", "disconnected")
    assert seen.flags == {"slave", "fail?"}
    assert SeenNode.parse("dd :7003@17003 myself,master - 0 0 0 connected").port == 7003


@pytest.mark.parametrize(("peer", "known"), [
    (PEER, 2),
    # Suspected, or its link being made again: on a busy host some link always is; still known.
    ("bb 127.0.0.1:7001@17001 master,fail? - 0 1 2 disconnected 8192-16383", 2),
    # The cluster agreed it failed: not counted until it answers again.
    ("bb 127.0.0.1:7001@17001 master,fail - 0 1 2 connected 8192-16383", 1),
])
def test_a_node_is_known_unless_the_cluster_agreed_it_failed(tmp_path: Path, peer: str, known: int) -> None:
    cluster = SeenAs(tmp_path, [MYSELF, peer])
    assert cluster._known(cluster.primaries[0]) == known


def test_a_handshake_with_a_known_nodes_address_neither_hides_it_nor_counts_twice(tmp_path: Path) -> None:
    """Meeting a known node again opens a handshake under a fresh id at the same address: read by
    address (redis-py's parse), one row hid the other, and the node counted as unknown while the
    handshake lasted — so it was met again, and again."""
    handshake = "ee 127.0.0.1:7001@17001 handshake - 0 0 0 disconnected"
    cluster = SeenAs(tmp_path, [MYSELF, PEER, handshake])
    assert cluster._known(cluster.primaries[0]) == 2


class NeverMeets(EmbeddedCluster):
    def _meet_first(self) -> None:
        pass


def test_a_cluster_that_did_not_form_says_what_each_node_saw(tmp_path: Path) -> None:
    cluster = NeverMeets(tmp_path / "c", primaries=2)
    with pytest.raises(RedisDidNotStart, match=r"not meet within 1\.0s") as raised:
        cluster.start(timeout_s=1.0)
    message = str(raised.value)
    for node in cluster.nodes:
        assert f"{node.data_dir.name} :{node.port} sees {node.port}[master,myself|connected]" in message
    assert all(node.process is None or node.process.poll() is not None for node in cluster.nodes)
