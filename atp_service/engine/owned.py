"""Which shards this process serves: all of them, or (several processes on a keyspace,
``app.membership``) those whose groups it owns now, the others ``Vacant``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from atp_service.engine.shard import ShardActor
from atp_service.engine.vacant import Vacant, Where
from atp_service.lease_clock import LeaseClock
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.leases import taken_over
from reservation import Moved, Quantities

if TYPE_CHECKING:
    from atp_service.config import EngineSettings
    from atp_service.engine.clock import Clock
    from atp_service.engine.routes import Routes
    from atp_service.metrics import EngineMetrics
    from atp_service.storage.log import LogStore
    from atp_service.storage.nodes import Nodes
    from reservation import Limits

log = logging.getLogger(__name__)


class OwnedShards:
    """The engine's shards, installed and vacated as their groups are taken and given up."""

    limits: Limits
    metrics: EngineMetrics
    clock: Clock
    routes: Routes
    orders: Any
    _log: LogStore
    _settings: EngineSettings
    place: Callable[[str], int]

    def __init__(self, actors: Sequence[ShardActor], shards: int) -> None:
        """``actors``: every shard's; none (leased groups): every shard vacant until its group is taken."""
        self._safety_defaults: dict[str, int] = {}
        self.where: Where = lambda _group: ("", 0)
        """Who owns a group this process does not (leased: ``app.membership`` sets it)."""
        self.on_install: list[Callable[[ShardActor], None]] = []
        """Called with every actor installed (a group taken)."""
        self._started = False
        self._unread: dict[str, list[int]] = {}  # the nodes (their shards) the last owner check did not read
        self.lease_clock = LeaseClock()
        """What a leased shard's ``lease_until`` is counted on (R7: every clock of the host; injected in tests)."""
        self.actors = list(actors) or [self.vacant(shard) for shard in range(shards)]

    @property
    def log_writer(self) -> Nodes:
        """Where the log's writes go, and the quarantine stream's beside them: acknowledged alike, with
        ``redis_wait_replicas`` only once that many replicas hold them (R7)."""
        return self._log.nodes

    def vacant(self, shard: int) -> Vacant:
        """A stand-in for ``shard`` while another process owns its group (every call: ``Moved``)."""
        return Vacant(shard, self.limits, self._log, self.clock, self._settings.shard_settings,
                      lambda group: self.where(group), self.metrics)  # the owner as known when asked

    def now_at(self, shard: int) -> int:
        """The service timestamp ``shard``'s commands are stamped with now (R6: its own clock, ``GroupClock``)."""
        return self.actors[shard].clock.now_ms()

    def local(self, shard: int) -> ShardActor:
        """``shard``'s actor, to read memory from: ``Moved`` where this process may not answer for it."""
        actor = self.actors[shard]  # its own lease clock: the engine's once installed, else (no lease) none read
        if actor.vacant or actor.lease_until < actor.lease_clock.now():
            raise Moved(shard, *self.where(shard))
        return actor

    def _not_here(self) -> Moved:
        """A reservation no shard of this process holds: the edge asks the others (``serving``:
        the groups answered for here, now)."""
        return Moved(-1, "", serving=self.serving())

    def serving(self) -> list[int]:
        """The groups this process answers for now: served, their lease not run out. A record none of
        them holds is not here; one of a group being recovered or handed over may be (retry)."""
        now = self.lease_clock.now()
        return [a.shard for a in self.actors if not a.vacant and a.lease_until >= now]

    def install(self, actor: ShardActor) -> None:
        """Serve ``actor``'s shard from now on (recovered after its group was taken)."""
        assert self.actors[actor.shard].vacant, f"shard {actor.shard} is served already"
        actor.ledger.safety_defaults = dict(self._safety_defaults)
        actor.lease_clock = self.lease_clock  # its deadline (``lease_until``) is counted on it
        self.actors[actor.shard] = actor
        self.routes.adopt(actor)
        for hook in self.on_install:
            hook(actor)
        if self._started:
            actor.start()
        if self.orders is not None:
            self.orders.find_pending([actor.ledger])

    async def vacate(self, shard: int, snapshot: bool) -> None:
        """Stop serving ``shard`` (its group handed over, or lost): calls from now on are ``Moved``;
        what it holds in flight ends durable or refused, and ``snapshot`` writes a final snapshot
        (a graceful hand-over: the next owner replays less)."""
        actor = self.actors[shard]
        if actor.vacant:
            return
        self.actors[shard] = vacant = self.vacant(shard)
        await actor.stop(vacant.moved())
        if snapshot and actor.failure is None and not self._log.is_fenced(shard):
            await actor.checkpoint(force=True)
        if self.actors[shard] is vacant:  # not taken again meanwhile: those routes would be the new actor's
            self.routes.drop(shard)
            # Its snapshots are the next owner's to report: kept here, the gauge summed over the
            # processes counted the shard twice, and a stale size for as long as this one ran.
            self._log.metrics.snapshot_bytes.remove(shard)

    def storage_unsure(self, skus: Iterable[str]) -> bool:
        """A shard of these SKUs has appends whose fate it does not know yet (its log unreachable)."""
        return any(self.actors[self.place(sku)].in_doubt for sku in skus)

    def availability(self, keys: Iterable[tuple[str, str]]) -> list[Quantities]:
        """Reads straight from memory: may include a batch whose append is in flight (ms), and leaves
        out appends in doubt until their shard has settled them (``storage_unsure``)."""
        local, place = self.local, self.place
        return [local(place(sku)).ledger.quantities(sku, loc) for sku, loc in keys]

    def is_order(self, home: int, reservation_id: str) -> bool:
        """Whether the record at ``home`` is an order spanning groups (``Orders``)."""
        rec = self.actors[home].ledger.reservation(reservation_id)
        return rec is not None and rec.is_order

    async def check_logs_reach(self, only: Collection[int] | None = None) -> dict[int, BaseException]:
        """Each shard (of ``only``; None: every one) stops if Redis lost entries it made durable
        (``ShardActor.stop_if_log_short``): every log's end read, each shard's durable entry read before it.
        Returns the shards left unread, each with what its node's read ended in. Leased, the groups served here
        only: one that stops is given up and recovered again (``Membership.failed``). A log past every entry its
        shard sent is first asked whose it is (leased): a group taken while this process was away (paused past its
        lease) holds its new owner's entries — lost here (fenced), not diverged. On a Redis Cluster each
        node's shards are read in a round trip of their own, all at once: a node that does not answer (hung,
        cut off) leaves its own shards unchecked, named (``log_end_unread``), and the others are judged, not
        every shard left unchecked for as long as one node hangs (liveness). Raises where no node answered (asked
        of every shard: ``only`` None)."""
        actors = {actor.shard: actor for actor in self.actors if not actor.vacant and (only is None or
                                                                                       actor.shard in only)}
        if only is not None and not actors:
            return {}  # none of them served here
        durable = {shard: actor.seq for shard, actor in actors.items()}
        by_node = self._log.nodes_of(list(actors))
        ends = await self._log_ends(by_node)
        unread: dict[str, tuple[list[int], BaseException]] = {}
        for (node, shards), newest in zip(by_node.items(), ends, strict=True):
            if isinstance(newest, BaseException):
                if not isinstance(newest, STORAGE_ERRORS):
                    raise newest  # a bug
                unread[node] = (shards, newest)
                continue
            for shard, last in zip(shards, newest, strict=True):
                actor = actors[shard]
                if last > actor.sent_top() and self._log.leased and await taken_over(self._log, shard):
                    continue  # taken by another: given up as any write refused FENCED is (``LogStore._refused``)
                actor.stop_if_log_short(durable[shard], last)
        if only is None:
            if unread and len(unread) == len(by_node):
                raise next(iter(unread.values()))[1]  # Redis unreachable: the shards notice and say so
            self._say_unread(unread)
        return {shard: error for shards, error in unread.values() for shard in shards}

    async def _log_ends(self, by_node: dict[str, list[int]]) -> list[list[int] | BaseException]:
        """Each node's shards' log ends, or what its read ended in: the nodes read at once."""
        if len(by_node) > 1:
            return await asyncio.gather(*(self._log.last_seqs(shards) for shards in by_node.values()),
                                        return_exceptions=True)
        try:  # one Redis: no task of its own to make
            return [await self._log.last_seqs(shards) for shards in by_node.values()]
        except STORAGE_ERRORS as exc:
            return [exc]

    def _say_unread(self, unread: dict[str, tuple[list[int], BaseException]]) -> None:
        """The nodes whose shards' log ends were not read while others' were: said once while it lasts."""
        said, self._unread = self._unread, {node: shards for node, (shards, _) in unread.items()}
        for node, (shards, error) in unread.items():
            if said.get(node) != shards:
                log.warning("owner check: Redis node %s did not answer (%r): the log ends of shards %s not read, "
                            "those of the other nodes' shards were; read again at the next check", node, error,
                            shards, extra={"event": "log_end_unread", "node": node, "shards": shards})
