"""A private Redis Cluster of ``redis-server`` children on loopback: for the tests that need a real
cluster, and for ``make cluster``.

Each node is an ``EmbeddedRedis`` with cluster mode on. Each is given a config epoch of its own
(``CLUSTER SET-CONFIG-EPOCH``, as ``redis-cli --cluster create`` does), the primaries split the 16,384
hash slots in even ranges (``CLUSTER ADDSLOTSRANGE``), every node meets the first (``CLUSTER MEET``),
and each replica follows its primary (``CLUSTER REPLICATE``); the cluster is ready when every node
reports ``cluster_state:ok``, knows every other node and has heard of the highest epoch.

    python -m atp_service.storage.embedded_cluster --data-dir DIR [--primaries 3 --replicas 1]
        [--serve [--processes N]]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from atp_service.config import ServiceConfig
from atp_service.config_values import WILDCARDS
from atp_service.logs import say_on_stdout

from .cluster_agreement import AGREE_TIMEOUT_S, restart, wait_agreed
from .embedded_redis import PORT_TRIES, EmbeddedRedis, RedisDidNotStart, free_port

SLOTS = 16384
"""Hash slots of a Redis Cluster."""
NODE_TIMEOUT_MS = 2000
"""``cluster-node-timeout``: how long a node may not answer before its replica takes over."""


@dataclass(frozen=True, slots=True)
class SeenNode:
    """One row of ``CLUSTER NODES``: a node as another node sees it."""

    node_id: str
    port: int
    flags: frozenset[str]
    """``myself``, ``master``, ``slave``, ``fail?`` (suspected), ``fail`` (agreed), ``handshake``, ``noaddr``."""
    master_id: str
    """The primary's id for a replica; ``-`` otherwise."""
    link: str
    """``connected`` or ``disconnected``: the seeing node's link to it at that instant."""

    @classmethod
    def parse(cls, line: str) -> SeenNode:
        node_id, address, flags, master_id, _ping, _pong, _epoch, link = line.split(" ")[:8]
        port = address.split("@")[0].rpartition(":")[2]
        return cls(node_id, int(port) if port.isdigit() else 0, frozenset(flags.split(",")), master_id, link)


class EmbeddedCluster:
    """``primaries`` nodes owning the slots, each with ``replicas`` replicas, data under ``data_dir``."""

    def __init__(self, data_dir: Path, primaries: int = 3, replicas: int = 0,
                 node_timeout_ms: int = NODE_TIMEOUT_MS, appendfsync: str = "everysec",
                 sync_delay_s: int | None = None) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError(f"primaries ({primaries}) must be at least 1 and replicas ({replicas}) at least 0")
        self.data_dir = Path(data_dir)
        self._bus_ports: dict[Path, int] = {}  # by node (data dir): two nodes may draw one port (``_started``)
        self._appendfsync = appendfsync
        self._node_timeout_ms = node_timeout_ms
        # ``repl-diskless-sync-delay``: a primary waits this long for more replicas before a full sync;
        # None keeps EmbeddedRedis's 0 (Redis's own default is 5 s): each primary has its replicas only.
        self._sync_delay = () if sync_delay_s is None else ("--repl-diskless-sync-delay", str(sync_delay_s))
        self.primaries = [self._node(f"p{i}") for i in range(primaries)]
        self.replicas = [self._node(f"p{i}r{j}") for i in range(primaries) for j in range(replicas)]
        self._per_primary = replicas

    def _node(self, name: str) -> EmbeddedRedis:
        # The cluster bus gets a port of its own: the default (port + 10,000) fails above 55,535.
        bus = free_port()
        # Its port is given, not left to pick: a port taken makes the whole node again (``_started``).
        node = EmbeddedRedis(self.data_dir / name, port=free_port(), appendfsync=self._appendfsync, extra_args=[
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self._node_timeout_ms), "--cluster-port", str(bus), *self._sync_delay])
        self._bus_ports[node.data_dir] = bus
        return node

    @property
    def nodes(self) -> list[EmbeddedRedis]:
        return self.primaries + self.replicas

    @property
    def url(self) -> str:
        """A seed node's URL: a cluster client finds the others from it."""
        return self.primaries[0].url

    def start(self, timeout_s: float = 30.0) -> EmbeddedCluster:
        """Start every node and form the cluster. A data directory where a cluster was formed before
        is refused: its nodes remember ports that this start does not reuse."""
        # Any node directory, not only this start's: a node made again on fresh ports lives in another.
        formed = [str(conf.parent) for conf in sorted(self.data_dir.glob("*/nodes.conf"))]
        if formed:
            raise RedisDidNotStart(f"data_dir: a cluster was formed in {formed[0]} before; give a fresh --data-dir")
        try:
            for nodes in (self.primaries, self.replicas):
                for i, node in enumerate(nodes):
                    nodes[i] = self._started(node)
            self._form(timeout_s)
            self._wait_until_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _started(self, node: EmbeddedRedis) -> EmbeddedRedis:
        """``node`` started. A port is only free when it is picked: one that another process took before
        redis-server bound it (its own or its bus port) makes the node again on fresh ports, a few times."""
        for attempt in range(1, PORT_TRIES + 1):
            try:
                return node.start()
            except RedisDidNotStart:
                if attempt == PORT_TRIES or not node.port_was_taken():
                    raise
                self._bus_ports.pop(node.data_dir, None)
                node = self._node(f"{node.data_dir.name}-{attempt}")
        raise AssertionError("unreachable")

    def _form(self, timeout_s: float) -> None:
        """Slots to the primaries, every node into one cluster, replicas behind their primaries. The meeting
        is waited for as long as the start's readiness: on a busy host it passed a fixed 10 s.

        Every node first gets a config epoch no other has (1, 2, ...). Met at epoch 0 each, the nodes told
        their collisions apart only while both were primaries, and a replica made one before its collision
        with its own primary was settled kept that primary's epoch: ``CLUSTER FAILOVER TAKEOVER`` does not
        raise an epoch that is already the highest, so the replica claimed the slots at its primary's very
        epoch, and the collision's settling could hand them back (the primary staying one, the replica
        following it again) — a takeover that a busy host undid now and then."""
        for epoch, node in enumerate(self.nodes, start=1):
            self._cluster(node, "SET-CONFIG-EPOCH", epoch)
        bounds = [SLOTS * i // len(self.primaries) for i in range(len(self.primaries) + 1)]
        for i, node in enumerate(self.primaries):
            self._cluster(node, "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
        self._meet_first()
        self._wait(lambda: all(self._known(node) == len(self.nodes) for node in self.nodes), timeout_s, "meet",
                   again=self._meet_first, views=self._views)
        for k, replica in enumerate(self.replicas):
            primary = self.primaries[k // self._per_primary]
            self._cluster(replica, "REPLICATE", self._cluster(primary, "MYID").decode())

    def add_node(self, timeout_s: float = 30.0) -> EmbeddedRedis:
        """A new primary serving no slot, met into the cluster as ``redis-cli --cluster add-node`` leaves it (a
        reshard then moves slots to it): returned once every node knows it and it finds the cluster ok."""
        node = self._started(self._node(f"p{len(self.primaries)}"))
        self.primaries.append(node)
        self._meet_first()
        self._wait(lambda: all(self._known(n) == len(self.nodes) for n in self.nodes)
                   and self._cluster(node, "INFO")["cluster_state"] == "ok", timeout_s, "met the added node",
                   again=self._meet_first, views=self._views)
        return node

    def _meet_first(self) -> None:
        """Every node that does not yet know all the others meets the first again. A meeting is a handshake
        that a node drops after ``cluster-node-timeout`` unanswered (a busy host): once dropped, nothing
        in Redis tries it again. MEET of a node already known does nothing."""
        first = self.primaries[0]
        for node in self.nodes[1:]:
            if self._known(node) < len(self.nodes):
                self._cluster(node, "MEET", "127.0.0.1", first.port, self._bus_ports[first.data_dir])

    def _wait_until_ready(self, timeout_s: float) -> None:
        """Every node ``cluster_state:ok``, knowing every other node and every replica, its current epoch the
        highest given (``_form``: a takeover then raises the replica's epoch above every other), and every
        replica in sync."""
        def ready(node: EmbeddedRedis) -> bool:
            info = self._cluster(node, "INFO")
            return (info["cluster_state"] == "ok" and int(info["cluster_current_epoch"]) == len(self.nodes)
                    and self._known(node) == len(self.nodes) and self._replicas_seen(node) == len(self.replicas))

        def following(node: EmbeddedRedis) -> bool:
            with self._client(node) as client:
                replication = client.info("replication")
            return bool(replication.get("role") == "slave" and replication.get("master_link_status") == "up")

        self._wait(lambda: all(ready(node) for node in self.nodes) and all(following(r) for r in self.replicas),
                   timeout_s, "cluster_state:ok at the highest epoch with every replica in sync", views=self._views)

    def _replicas_seen(self, node: EmbeddedRedis) -> int:
        """Replicas this node's view holds as replicas of a primary: the roles reach every node by
        gossip, after the replicas are in sync (a client asking a node too early saw none)."""
        return sum(1 for seen in self._view(node) if "slave" in seen.flags and seen.master_id != "-")

    def _known(self, node: EmbeddedRedis) -> int:
        """Nodes in this node's table (itself included), a meeting still in handshake not counted. A
        node it suspects (``fail?``: no answer within half the node timeout) or whose link it is
        making again is still known: on a busy host some link is always being made again somewhere,
        and a cluster asked to have them all up at one instant never formed. Only a node the
        cluster agreed has failed (``fail``) is not counted."""
        return sum(1 for seen in self._view(node) if not seen.flags & {"handshake", "noaddr", "fail"})

    def _view(self, node: EmbeddedRedis) -> list[SeenNode]:
        """``CLUSTER NODES`` of ``node``, a row per node id (redis-py's parse keys by address, where a
        handshake with a known node's address hid the known node)."""
        with self._client(node) as client:
            raw = client.execute_command("CLUSTER", "NODES")
        return [SeenNode.parse(line) for line in raw.decode().splitlines() if line.strip()]

    def _views(self) -> str:
        """Every node's view, one line each: what a start that did not form reports."""
        lines = []
        for node in self.nodes:
            try:
                seen = ", ".join(f"{s.port}[{','.join(sorted(s.flags))}|{s.link}]" for s in self._view(node))
            except (redis.RedisError, OSError) as exc:
                seen = f"no answer ({exc})"
            lines.append(f"{node.data_dir.name} :{node.port} sees {seen}")
        return "; ".join(lines)

    @staticmethod
    def _wait(done: Callable[[], bool], timeout_s: float, what: str, again: Callable[[], None] | None = None,
              again_every_s: float = 1.0, views: Callable[[], str] | None = None) -> None:
        """Until ``done``, or RedisDidNotStart after ``timeout_s`` (with ``views()``, if given: what each
        node saw); ``again`` (if any) every ``again_every_s``."""
        deadline = time.monotonic() + timeout_s
        next_again = time.monotonic() + again_every_s
        while not done():
            now = time.monotonic()
            if now > deadline:
                seen = f": {views()}" if views is not None else ""
                raise RedisDidNotStart(f"Redis Cluster: not {what} within {timeout_s}s{seen}")
            if again is not None and now >= next_again:
                again()
                next_again = now + again_every_s
            time.sleep(0.05)

    @staticmethod
    def _client(node: EmbeddedRedis) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2.0)

    def _cluster(self, node: EmbeddedRedis, command: str, *args: str | int) -> Any:
        """``CLUSTER <command>`` on one node, its reply as redis-py parses it (INFO and NODES: dicts)."""
        with self._client(node) as client:
            return client.cluster(command, *args)

    def serving_primaries(self) -> list[EmbeddedRedis]:
        """The nodes that are primaries now (a failover promotes a replica)."""
        return [node for node in self.nodes if self._role(node) == "master"]

    def _role(self, node: EmbeddedRedis) -> str:
        if node.process is None or node.process.poll() is not None:
            return "down"
        with self._client(node) as client:
            return str(client.info("replication").get("role"))

    def take_over(self, replica: EmbeddedRedis, timeout_s: float = AGREE_TIMEOUT_S) -> None:
        """``replica`` takes its primary's slots at once (``CLUSTER FAILOVER TAKEOVER``: no election, its primary
        may be gone), and every running node agrees that it serves them, at one current epoch
        (``cluster_agreement``): a takeover that changes the topology again before that may collide epochs."""
        self._cluster(replica, "FAILOVER", "TAKEOVER")
        wait_agreed(self.nodes, f"agreed that :{replica.port} took over",
                    lambda seen: any(port == replica.port for *_, port in seen.owners), timeout_s)

    def fail_over(self, node: EmbeddedRedis, timeout_s: float = AGREE_TIMEOUT_S) -> None:
        """kill -9 of ``node``, then — once every running node agrees that another (its replica) serves its
        slots — ``node`` started again and agreed with (``rejoin``)."""
        node.kill()
        wait_agreed(self.nodes, f"agreed that every slot of the killed :{node.port} is served by another",
                    lambda seen: all(port != node.port for *_, port in seen.owners), timeout_s)
        self.rejoin(node, timeout_s)

    def rejoin(self, node: EmbeddedRedis, timeout_s: float = AGREE_TIMEOUT_S) -> None:
        """``node``, killed, started again at its old ports (tried again while another process holds one) and
        agreed with by every running node, every replica in sync. It comes back as a replica of the one that
        took over its slots — or, that one stalled past the node timeout meanwhile (a busy host), as their
        primary again: either way the cluster serves every slot."""
        restart(node, self._bus_ports[node.data_dir], timeout_s)
        wait_agreed(self.nodes, f"agreed with :{node.port} back", timeout_s=timeout_s)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


SERVICE_ENV = {"ATP_REDIS_CLUSTER": "true", "ATP_INPUT_STREAMS": "atp:{in}:pos,atp:{in}:wms",
               "ATP_DEAD_LETTER_STREAM": "atp:{in}:dlq", "ATP_QUARANTINE_STREAM": "atp:{in}:quarantine"}
"""How ``--serve`` runs one service on the cluster: its input streams share a hash tag, as a cluster needs."""
LEASED_ENV = {"ATP_REDIS_CLUSTER": "true", "ATP_OWNERSHIP": "leases", "ATP_DEMO": "false"}
"""How ``--serve --processes N`` (N > 1) runs each process, beyond ``SERVICE_ENV``: leased, without the
demo estate's channel feeds, which leased processes do not serve yet. They read the input streams
together, each as a consumer of its own."""


@dataclass(frozen=True)
class Served:
    """One ``atp-service serve`` child: where it answers, and its process."""

    address: str
    process: subprocess.Popen[bytes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="a fresh directory: one per node under it")
    parser.add_argument("--primaries", type=int, default=3, help="nodes that own hash slots")
    parser.add_argument("--replicas", type=int, default=1, help="replicas per primary")
    parser.add_argument("--sync-delay-s", type=int, default=None, help="seconds a primary waits for more "
                        "replicas before a full sync (default: Redis's, 5)")
    parser.add_argument("--serve", action="store_true",
                        help="also run `atp-service serve` on the cluster (ATP_* variables apply) until Ctrl-C")
    parser.add_argument("--processes", type=int, default=1,
                        help="with --serve: service processes; more than one share the keyspace under leases "
                             "(ATP_OWNERSHIP=leases), on consecutive ports from ATP_PORT (50051)")
    args = parser.parse_args()
    if args.processes < 1:
        parser.error(f"--processes: at least 1, got {args.processes}")
    try:  # before any node starts: a setting refused at once, not once the cluster is up
        served_ports(os.environ, args.processes)
    except ValueError as exc:
        parser.error(str(exc))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    status = 0
    with EmbeddedCluster(args.data_dir, args.primaries, args.replicas, sync_delay_s=args.sync_delay_s) as cluster:
        ports = ", ".join(str(node.port) for node in cluster.nodes)
        say_on_stdout(f"Redis Cluster ready: {cluster.url} (nodes on 127.0.0.1: {ports}); Ctrl-C stops it")
        services = _serve(cluster.url, args.processes) if args.serve else []
        try:
            status = _watch(services, stop)
        finally:  # the services first: their final snapshots go to the cluster
            for service in services:
                if service.process.poll() is None:
                    service.process.terminate()
            for service in services:
                service.process.wait()
    sys.exit(status)


def served_ports(env: Mapping[str, str], processes: int) -> list[tuple[str, int, int]]:
    """(address, port, metrics port) of each process ``--serve`` runs, ATP_HOST, ATP_PORT and ATP_METRICS_PORT read
    as the service reads them: several on consecutive ports from each, a metrics port 0 each a free one (the service's
    0), never 0 counted on to ports 1, 2, ...; ValueError naming the variable without a port to count from."""
    # Bounded as the service bounds them too (a metrics port below -1 was given to each once the cluster ran).
    served = ServiceConfig.from_env({n: env[n] for n in ("ATP_HOST", "ATP_PORT", "ATP_METRICS_PORT") if n in env})
    host, port, metrics = served.host, served.port, served.metrics_port
    if processes > 1 and not 1 <= port <= 65536 - processes:  # 0 picks a port the others could not be told
        raise ValueError(f"ATP_PORT: {processes} processes listen on consecutive ports from it, within [1, 65535], "
                         f"got {port}")
    if processes > 1 and metrics > 65536 - processes:
        raise ValueError(f"ATP_METRICS_PORT: {processes} processes listen on consecutive ports from it, within "
                         f"[1, 65535] (0: each a free one; -1: none), got {metrics}")
    reachable = "127.0.0.1" if host in WILDCARDS else host
    return [(f"{reachable}:{port + i}", port + i, metrics + i if metrics > 0 else metrics) for i in range(processes)]


def _serve(url: str, processes: int) -> list[Served]:
    """``atp-service serve`` on the cluster, each a child of its own (it drains and snapshots on SIGTERM):
    one as the service runs alone, or ``processes`` leased ones (``served_ports``)."""
    command = [sys.executable, "-m", "atp_service", "serve"]
    addresses = served_ports(os.environ, processes)
    if processes == 1:
        env = {**SERVICE_ENV, **os.environ, "ATP_REDIS_URL": url}
        served = [Served(addresses[0][0], subprocess.Popen(command, env=env))]
    else:
        served = []
        for address, port, metrics in addresses:
            env = {"ATP_AUTH": "off", **SERVICE_ENV, **os.environ, **LEASED_ENV, "ATP_REDIS_URL": url,
                   "ATP_PORT": str(port), "ATP_METRICS_PORT": str(metrics), "ATP_ADVERTISE_ADDRESS": address}
            served.append(Served(address, subprocess.Popen(command, env=env)))
    for n, service in enumerate(served, 1):
        say_on_stdout(f"service process {n} of {processes}: {service.address} (pid {service.process.pid})")
    return served


def _watch(services: list[Served], stop: threading.Event) -> int:
    """Until Ctrl-C (0), or until every service process has exited (1): each exit is said as it happens."""
    gone: set[str] = set()
    while not stop.wait(0.5):
        for service in services:
            code = service.process.poll()
            if code is not None and service.address not in gone:
                gone.add(service.address)
                say_on_stdout(f"service process {service.address} exited with status {code}")
        if services and len(gone) == len(services):
            say_on_stdout("no service process is left: stopping the Redis Cluster")
            return 1
    return 0


if __name__ == "__main__":
    main()
