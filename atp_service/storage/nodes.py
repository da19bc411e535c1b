"""Where the service's write scripts go, and when their effect counts as durable.

One Redis takes any set of keys in one script call, so a group commit is one call. A Redis Cluster runs a script
only within one slot: the caller makes one call per group (``keys.py`` puts every key of a group under one hash tag)
and the calls go pipelined, one round trip per primary. Either way the scripts go on a node's write lane
(``lane.py``: connections of their own, outside redis-py's pool, one write and one deadline per round trip) —
``WAIT`` counts the replicas that have every earlier write *of the connection it is sent on*, so it follows the
scripts on the same connection (sent through a pool it would answer for some other connection's writes). A call that
a primary did not answer, or answered for a slot it no longer serves, has the slot map read again before the next
call to that primary (one read for every call to it made meanwhile; that primary asked last); calls to the others go
on meanwhile (that read may meet another hung node first). ``run_each`` hands each node's replies on as soon as that
node has answered: the log's commits to the nodes that answer never wait for a hung one.

A call's effect is acknowledged once its script returned and, with ``wait_replicas``, that many
replicas confirmed it; fewer replicas in time makes the call's outcome ``NotReplicated``: it landed
on the primary but a failover may still lose it, so it is in doubt like a timeout (R7).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import defaultdict
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import msgspec
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import AskError, ClusterDownError, NoScriptError, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_service.storage.clients import close_any, node_url, read_map
from atp_service.storage.clients import connect as connect
from atp_service.storage.clients import connect_any as connect_any
from atp_service.storage.lane import Lane, check_writable
from atp_service.tasks import cancel_and_wait, keep

TOPOLOGY_ERRORS = (AskError, ClusterDownError, TryAgainError, RedisConnectionError, RedisTimeoutError, OSError,
                   asyncio.TimeoutError)
"""A node answered for a slot it no longer has, or did not answer: the slot map is read again before its next call."""
_NOT_ASKED = frozenset({"fail", "fail?", "noaddr", "handshake"})
"""``CLUSTER NODES`` flags of a node ``_learn_nodes`` leaves out (down, or no member yet): one down stays listed
until forgotten, and each read of the map that asked it first waited out the connect timeout (liveness)."""
Answer = Callable[[list[int], list[Any]], None]
"""Where ``Nodes.run_each`` hands one node's replies: the indices of its calls, their replies."""


class Script:
    """A Lua script, sent by its digest (``EVALSHA``) and loaded where a node lacks it."""

    __slots__ = ("body", "sha")

    def __init__(self, body: str) -> None:
        self.body = body
        self.sha = hashlib.sha1(body.encode()).hexdigest()


class Call(msgspec.Struct, eq=False):
    """One script call: its keys (one slot on a cluster) and arguments, or (``packed``) the whole
    ``EVALSHA`` command already in RESP, its ``keys`` kept for routing and ``args`` left empty. A
    struct: built in C, one per group commit (``eq=False``: compared and hashed by identity)."""

    script: Script
    keys: list[str]
    args: list[Any]
    packed: bytes | None = None


class NotReplicated(RedisError):
    """The write landed on the primary, but fewer replicas than ``wait_replicas`` confirmed it in
    time: a failover could still lose it, so its outcome is in doubt (settled like a timeout)."""


class Nodes:
    """Runs write script calls against one Redis or a Redis Cluster; ``reader`` serves the reads
    (a cluster client routes each by its key)."""

    def __init__(self, reader: Any, *, cluster: bool = False, url: str = "", timeout_s: float = 2.0,
                 wait_replicas: int = 0, wait_timeout_ms: int = 1000) -> None:
        self.reader = reader
        self.cluster = cluster
        self.wait_replicas = wait_replicas
        """Replicas that must confirm a write before it counts (0: the primary's answer is enough)."""
        self.wait_timeout_ms = wait_timeout_ms
        self._url, self._timeout_s = url, timeout_s
        self._lanes: dict[str, Lane] = {}  # per primary on a cluster ("" for one Redis): the write connections
        # Primaries that failed or redirected a call since the slot map was read (none: the map is
        # current): it is read again before the next call to one of them.
        self._suspect: set[str] = set()
        self._mapped = False  # the slot map was read (the first call)
        self._reading: asyncio.Future[None] | None = None  # a read of the slot map under way, and the primaries
        self._reading_for: set[str] = set()  # whose calls wait for it (``_suspect`` when it began)
        self._tasks: set[asyncio.Task[None]] = set()  # runs begun without a task that needed one after all
        self._known: set[tuple[str, int]] = set()  # every node seen (``_learn_nodes``): each read of the map asks them
        self._learning: asyncio.Future[None] | None = None  # ``_learn_nodes`` after a read of the map
        self._closed = False  # a read of the map under way at the close may end after it: nothing learned then

    @property
    def together(self) -> bool:
        """Whether one call may touch keys of several groups (one Redis: yes; a cluster: no)."""
        return not self.cluster

    async def run(self, calls: list[Call], extra_s: float = 0.0) -> list[Any]:
        """Each call's reply, or the exception it ended in (a node that did not answer: every call
        sent to it). Calls to one node run in the order given. ``extra_s``: time allowed beyond the
        socket timeout (a call that carries much data)."""
        if not self.cluster:
            return await self._run_on(self._lane(""), calls, extra_s)
        out: list[Any] = [None] * len(calls)
        await self.run_each(calls, partial(_into, out), extra_s)
        return out

    async def run_each(self, calls: list[Call], answer: Answer, extra_s: float = 0.0) -> None:
        """``run``, each node's replies handed to ``answer`` (the indices of its calls, their replies) as
        soon as that node has answered: a call to a node that answers never waits for one that hangs
        (the log's group commits on a cluster). Returns once every node has answered, or raised."""
        if not self.cluster:
            answer(list(range(len(calls))), await self._run_on(self._lane(""), calls, extra_s))
            return
        if not self._mapped:
            await self.reader.initialize()  # once: the slot map, on the first call
            self._mapped = True  # first calls made meanwhile (each shard's) waited for the same read: one list, owned
            self._learning = self._learning or asyncio.ensure_future(self._learn_nodes())  # not waited: default node
        # Only the calls to a node that failed or redirected one since the map was read wait for the
        # map to be read again: that read may ask a hung node first and wait out its timeout (or find
        # no other node to ask), and the nodes that answer must not wait with it.
        stale: set[str] = self._suspect
        if self._reading is not None:  # and those to a node whose read is under way: for that read
            stale = self._reading_for.union(stale)
        now: list[int] = []
        later: list[int] = []
        for i, call in enumerate(calls):
            (later if stale and self.reader.get_node_from_key(call.keys[0]).name in stale else now).append(i)
        if later:
            await _every(self._route(calls, now, answer, extra_s), self._route_remapped(calls, later, answer, extra_s))
        else:  # nearly every run: no task of its own to make
            await self._route(calls, now, answer, extra_s)

    async def _route(self, calls: list[Call], at: list[int], answer: Answer, extra_s: float) -> None:
        """The calls ``at``, pipelined per primary as the slot map says; each node's replies to ``answer``."""
        by_node: dict[str, list[int]] = defaultdict(list)
        for i in at:
            by_node[self.reader.get_node_from_key(calls[i].keys[0]).name].append(i)
        runs = [self._answered_by(name, calls, node_at, answer, extra_s) for name, node_at in by_node.items()]
        await (runs[0] if len(runs) == 1 else _every(*runs))

    async def _answered_by(self, name: str, calls: list[Call], at: list[int], answer: Answer, extra_s: float) -> None:
        answer(at, await self._run_on(self._lane(name), [calls[i] for i in at], extra_s, name))

    async def _route_remapped(self, calls: list[Call], at: list[int], answer: Answer, extra_s: float) -> None:
        """``_route`` once the slot map is read again; a read that failed is each call's reply (none was sent)."""
        if not at:
            return
        try:
            await self._read_map()
        except Exception as exc:
            answer(at, [exc] * len(at))
            return
        await self._route(calls, at, answer, extra_s)

    async def _read_map(self) -> None:
        """The slot map read again, once for all the calls that wait meanwhile (a call made while it
        is read must not go with the map already found out of date); none when read since found stale."""
        if self._reading is None:
            if not self._suspect:
                return
            self._reading_for, self._suspect = self._suspect, set()
            self._ask_known_too()  # and a primary that did not answer asked last ("": none)
            self._reading = asyncio.ensure_future(read_map(self.reader.nodes_manager, max(self._reading_for)))
            self._reading.add_done_callback(self._map_read)  # before any waiter's: they resume on the new state
        await asyncio.shield(self._reading)  # a waiter cancelled ends no other's read

    def _map_read(self, reading: asyncio.Future[None]) -> None:
        """A read of the slot map ended; not read (failed, cancelled), the next call to its nodes tries again."""
        suspect, self._reading, self._reading_for = self._reading_for, None, set()
        if reading.cancelled() or reading.exception() is not None:
            self._suspect |= suspect
        else:
            self._retire_former_primaries()
            if not self._closed and (self._learning is None or self._learning.done()):  # a node added since
                self._learning = asyncio.ensure_future(self._learn_nodes())

    def _ask_known_too(self) -> None:
        """The nodes of ``_known`` the client would not ask for the map made nodes it asks: kept among
        them (and their connections closed) only while a read of the map names them, as redis-py does
        with its own. Not ``initialize``'s extra nodes: it makes them anew at each read, and one it
        asked keeps its connection open for ever after."""
        manager = self.reader.nodes_manager
        for host, port in self._known:
            host, port = manager.remap_host_port(host, port)
            if f"{host}:{port}" not in manager.startup_nodes:
                manager.startup_nodes[f"{host}:{port}"] = ClusterNode(host, port, **manager.connection_kwargs)

    async def _learn_nodes(self) -> None:
        """Every node the cluster lists (``CLUSTER NODES``) kept in ``_known``, replicas included: the client
        knows a cluster by the nodes its last read of the map named, and ``CLUSTER SLOTS`` names a replica
        only once its primary has heard it holds data. On a cluster new when the map was read, a lone
        primary's client knew that primary alone: failed and its replica promoted, no read of the map found
        the new one, and every shard waited for the old primary to come back (liveness). Best effort: a
        node that does not answer leaves ``_known`` as it was (the map's own nodes are asked anyway); the
        latest list replaces it (a node removed from the cluster is not asked for ever after). A node the
        list flags failing is left out (see ``_NOT_ASKED``)."""
        try:
            listed: Any = await self.reader.cluster_nodes()
        except Exception:  # best effort (see above)
            return
        known = set()
        for address, node in listed.items():
            host, _, port = str(address).rpartition(":")
            flags = set(str(node.get("flags", "")).split(","))
            if host and port.isdigit() and int(port) and not flags & _NOT_ASKED:  # no address: port 0
                known.add((host, int(port)))
        self._known = known or self._known

    async def run_one(self, call: Call, extra_s: float = 0.0) -> Any:
        """One call's reply; raises what it ended in."""
        (reply,) = await self.run([call], extra_s)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def read_map_again(self) -> None:
        """A cluster's slot map read again, every node seen asked: after a read no node answered (best effort)."""
        self._map_stale("")  # no primary's calls wait for this read
        with contextlib.suppress(Exception):
            await self._read_map()

    async def aclose(self) -> None:
        self._closed = True  # nor learned after (``_map_read``): it would open connections on the closed client
        await cancel_and_wait(self._learning)
        for lane in self._lanes.values():
            await lane.aclose()
        self._lanes.clear()
        await close_any(self.reader)

    def begin(self, calls: list[Call], done: Callable[[list[Any]], None]) -> bool:
        """``run(calls)`` begun now, without a task, where it can be: one Redis, no replicas to wait
        for, a write connection idle (``Lane.begin``). ``done`` gets what ``run`` would return, once,
        from the event loop. False: nothing was sent; use ``run``. Replies with no error among them
        (nearly every commit's) go from the lane to ``done`` directly; ``_begun_fault`` sees the rest."""
        if self.cluster or self.wait_replicas:
            return False
        lane = self._lanes.get("") or self._lane("")
        if len(calls) == 1:
            packed = calls[0].packed
            if packed is not None:  # the log's group commit, in RESP already (``append_resp``): no list, no pack
                return lane.begin_packed(packed, 1, done, partial(self._begun_fault, lane, calls, done))
        elif not calls:
            return False
        return lane.begin([_evalsha(call) for call in calls], done, partial(self._begun_fault, lane, calls, done))

    def _begun_fault(self, lane: Lane, calls: list[Call], done: Callable[[list[Any]], None], result: Any) -> None:
        """A begun run that ended (``result`` an exception) or met an error reply: a call that found
        no script (NOSCRIPT) is sent again once it is loaded, by a task; the rest as ``run`` ends it."""
        if isinstance(result, BaseException):
            done([result] * len(calls))  # as ``_run_on``: what ended the exchange ended every call
        elif _any_unrun(result):
            keep(self._tasks, self._finish_unrun(lane, calls, result, done))
        else:
            done(result)  # a script's refusal: the caller's to read

    async def _finish_unrun(self, lane: Lane, calls: list[Call], replies: list[Any],
                            done: Callable[[list[Any]], None]) -> None:
        """A begun run some of whose calls found no script: load it, send those again, then ``done``."""
        try:
            replies = await self._rerun_unrun(lane, calls, replies)
        except Exception as exc:  # as ``run`` would end them: each call's outcome unknown
            replies = [exc] * len(calls)
        except BaseException:
            done([RedisConnectionError("the write was abandoned: the service is stopping")] * len(calls))
            raise
        done(replies)

    async def _run_on(self, lane: Lane, calls: list[Call], extra_s: float = 0.0, name: str = "") -> list[Any]:
        try:
            replies = await self._rerun_unrun(lane, calls, await self._pipeline(lane, calls, extra_s), extra_s)
        except TOPOLOGY_ERRORS as exc:
            self._map_stale(name)
            return [exc] * len(calls)
        except RedisError as exc:
            return [exc] * len(calls)
        if self.cluster and any(isinstance(r, TOPOLOGY_ERRORS) for r in replies):
            self._map_stale(name)
        return replies

    def _map_stale(self, name: str) -> None:
        """The primary ``name`` did not answer, or answered for a slot it no longer serves: the map read again first."""
        if self.cluster:
            self._suspect.add(name)

    async def _rerun_unrun(self, lane: Lane, calls: list[Call], replies: list[Any], extra_s: float = 0.0) -> list[Any]:
        """``replies``, the calls not run (NOSCRIPT: a restarted or failed-over node) run again, scripts loaded."""
        unrun = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if unrun:
            bodies = list(dict.fromkeys(calls[i].script.body for i in unrun))
            for loaded in await lane.exchange([("SCRIPT", "LOAD", body) for body in bodies]):
                if isinstance(loaded, BaseException):
                    raise loaded
            for i, reply in zip(unrun, await self._pipeline(lane, [calls[i] for i in unrun], extra_s), strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, lane: Lane, calls: list[Call], extra_s: float = 0.0) -> list[Any]:
        """The calls' replies, in one round trip (with ``WAIT`` after them when replicas must confirm)."""
        commands = [_evalsha(call) for call in calls]
        if self.wait_replicas:
            commands.append(("WAIT", self.wait_replicas, self.wait_timeout_ms))
            extra_s += self.wait_timeout_ms / 1000
        replies = await lane.exchange(commands, extra_s)
        if self.wait_replicas:
            confirmed = replies.pop()
            if isinstance(confirmed, BaseException):  # each call's own error stands (a MOVED from a node
                # that is a replica now: the slot map is read again); the rest are not confirmed
                return [r if isinstance(r, BaseException) else confirmed for r in replies]
            if int(confirmed) < self.wait_replicas:
                short = NotReplicated(f"NOT REPLICATED {confirmed} of {self.wait_replicas} replicas confirmed the "
                                      f"write within {self.wait_timeout_ms} ms")
                replies = [r if isinstance(r, BaseException) else short for r in replies]
        return replies

    async def on_each_primary(self, commands: list[Any]) -> list[tuple[str, list[Any]]]:
        """``commands``' replies (an error reply as its exception) from the one Redis, or from each primary
        of a cluster, with the words naming it: each node's in one exchange, on one connection, closed
        after (never a write's: the commands may leave it inside a transaction)."""
        if not self.cluster:
            return [("Redis", await self._lane("").exchange(commands, keep=False))]
        await self.reader.initialize()
        slots = self.reader.nodes_manager.slots_cache  # slot -> its nodes, the primary first
        primaries = sorted({nodes[0].name for nodes in slots.values() if nodes})
        return [(f"Redis node {name} (primary)", await self._lane(name).exchange(commands, keep=False))
                for name in primaries]

    def _lane(self, name: str) -> Lane:
        """The write lane of the primary ``name`` (host:port, with the cluster URL's options), or of
        the one Redis (``""``: the reader's own connection class and arguments)."""
        lane = self._lanes.get(name)
        if lane is None:
            if name:
                self._retire_former_primaries()  # a new primary: one it replaced may be gone
                host, port = name.rsplit(":", 1)
                client = connect(node_url(self._url, host, int(port)), self._timeout_s)
            else:
                client = self.reader
            lane = self._lanes[name] = Lane(client.connection_pool)
        return lane

    def _retire_former_primaries(self) -> None:
        """The lanes of addresses that own no slot any more (a failover promoted a replica, a node
        was replaced) retired (``Lane.retire``: what is in flight on them ends as it would). Kept,
        each would hold its sockets to a node that is gone, or a replica, for the life of the
        process: one more set with every node replaced. Runs when the slot map was read again, and
        when a lane is opened to a new primary (the reads' client may have read the map itself)."""
        if not self._lanes:
            return
        slots = self.reader.nodes_manager.slots_cache  # slot -> its nodes, the primary first
        primaries = {nodes[0].name for nodes in slots.values() if nodes}
        for name in [name for name in self._lanes if name not in primaries]:
            self._lanes.pop(name).retire()


def _into(out: list[Any], at: list[int], replies: list[Any]) -> None:
    for i, reply in zip(at, replies, strict=True):
        out[i] = reply


async def _every(*runs: Awaitable[None]) -> None:
    """Each of ``runs`` to its end, then the first exception one raised: none is left running on its own
    (its node's replies would reach ``answer`` after the run that made them had ended)."""
    for ended in await asyncio.gather(*runs, return_exceptions=True):
        if isinstance(ended, BaseException):
            raise ended


def _any_unrun(replies: list[Any]) -> bool:
    """Whether a call found no script (NOSCRIPT). A loop, not ``any`` over a generator: this runs
    on every group commit's reply."""
    for reply in replies:  # noqa: SIM110 (see above)
        if isinstance(reply, NoScriptError):
            return True
    return False


def _evalsha(call: Call) -> tuple[Any, ...] | bytes:
    if call.packed is not None:
        return call.packed
    return ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)


def open_nodes(url: str, timeout_s: float, *, cluster: bool = False, wait_replicas: int = 0,
               wait_timeout_ms: int = 1000) -> Nodes:
    """The writer of one Redis at ``url``, or of the Redis Cluster one of whose nodes it names.
    ``ValueError`` (naming ``redis_url``) for URL options the writes cannot work with, at once
    rather than at the first write."""
    check_writable(connect(url, timeout_s).connection_pool.connection_kwargs)  # parses only: no socket
    return Nodes(connect_any(url, timeout_s, cluster=cluster), cluster=cluster, url=url, timeout_s=timeout_s,
                 wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms)
