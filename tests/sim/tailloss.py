"""Redis losing an acknowledged tail (``--lose-tail``): a primary restarted from an older AOF or RDB, or a
failover to a replica that lagged.

At the start of a step Redis's state may be saved (``RedisImage``: every key the simulation models —
the logs and their newest ids, snapshots, snapshot staging parts, the owner keys and the claims
counter, the fences, the channel streams and their desk's fence); at a tick of a later step Redis
comes back from that image, whatever is in flight then: the connections break, so every append,
snapshot part and channel write sent and not yet answered fails (landed in the old Redis or not, it is
not in the restored one), and no script on its way reaches the restored Redis. What was acknowledged
after the save is legitimately lost: the model of what clients were told (``Acknowledged``)
and the reference history (``SimLog.history``) are cut back to the save, and the calls of the step of
the loss are not booked (acknowledged before or after it: the sim cannot tell which).

The service must notice as it promises (docs/OPERATIONS.md, "What acknowledged means"): an append
refused FENCED with no newer claim (``claim_lost``), a log found shorter than what a shard made durable
(``LogDiverged``: a settle, a snapshot refused GAP), or the owner check — then it stops and is restarted
(``World.restart_after_failure``), and the restarted service serves exactly what Redis holds. Until
then (``stale``) its memory may hold what Redis lost: the checks that compare memory with the log wait
for the restart; once the step of the loss is over, an instance still running must hold only what Redis
holds (the owner check, ``World.owner_check``, runs at each step's end as it runs every owner_check_s).

With several processes (``--processes``) the image holds each group's lease and owner key too, and the
service's notice is the leased one: a write refused FENCED gives its group up, a renewal finding the lease
another's (or gone) does, and a shard finding its log short (a settle, a snapshot, the owner check) stops
and its group is given up (``Membership.failed``) and taken again from what Redis holds — no process
restarts. Each running process's owner check also runs at ticks drawn here (``draw_checks``), as it runs
every owner_check_s whatever the step is doing; once the step is over every group is served from what
Redis holds (``Driver.after_loss``).

A shard's ``LogDiverged`` is expected (``allows``) only from an instance that lived through a loss of what it
made durable (``witnessed``): one process, a loss since it started (``World.boot``); several, a loss of the
group's keys (every node's restore or its node's) since the taking of the group began, in the process that
took it (``SimMembership.witnessed``) — paused across the loss or not, dead since or not. A process started,
or a group taken, after the loss recovered the log as Redis held it then: its shard finding it short is a
defect (a shard that believed durable what never was), not the loss.

The fault draws from its own random stream, and only with the flag: seeds without it replay as before.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError

from atp_service.storage.durability import LogDiverged
from tests.sim.snapkeys import Held, restore_shards

if TYPE_CHECKING:
    from tests.sim.checks import Acknowledged
    from tests.sim.simchannels import SimChannelStore
    from tests.sim.simlog import SimLog
    from tests.sim.world import World

SAVE_P = 0.2
"""At a step's start, with no saved image kept, the chance Redis's state is saved now."""
RESTORE_P = 0.3
"""At a step's start, with an image kept, the chance Redis comes back from it during the step."""
RESTORE_TICKS = 60
"""The restore happens at a tick drawn up to this (or at the step's end, when the step ended first)."""
OWNER_CHECKS = (0, 1, 1, 2)
"""Several processes: how many times in a step the running processes' owner checks run (drawn), each at
a tick up to RESTORE_TICKS."""
NODE_P = 0.5
"""Several processes (a Redis Cluster): the chance a restore is of one node only, the others keeping theirs."""


@dataclass
class RedisImage:
    """What Redis holds at a point (the AOF or RDB it later restarts from), and what the clients had been
    told succeeded by then."""

    logs: dict[int, list[tuple[int, bytes]]]
    snapkeys: Held  # the snapshots' keys, stored and staged
    fences: dict[int, int]
    redis_epoch: str
    owners: dict[int, str]
    claims: int
    history: dict[int, int]  # per shard, how many entries had ever landed
    acked: Acknowledged
    channels: tuple[Any, Any, int]  # the channel streams, their state hashes, the desk's fence
    leases: dict[int, str]  # several processes: each group's lease key, the holder it names

    @classmethod
    def capture(cls, log: SimLog, acked: Acknowledged, channels: SimChannelStore,
                leases: dict[int, str]) -> RedisImage:
        return cls(copy.deepcopy(dict(log.logs)), dict(log.snapkeys), dict(log.fences),
                   log.redis_epoch, dict(log.owners), log.claims,
                   {shard: len(entries) for shard, entries in log.history.items()}, copy.deepcopy(acked),
                   copy.deepcopy((channels.streams, channels.state, channels.redis_fence)), dict(leases))

    def restore(self, log: SimLog, acked: Acknowledged, channels: SimChannelStore, leases: dict[int, str]) -> None:
        """Redis restarts from this image; what was acknowledged after it is gone (R7 cut back)."""
        leases.clear()
        leases.update(self.leases)
        streams, state, channels.redis_fence = copy.deepcopy(self.channels)
        channels.streams.clear()
        channels.streams.update(streams)
        channels.state.clear()
        channels.state.update(state)
        log.logs.clear()
        log.logs.update(copy.deepcopy(self.logs))
        log.snapkeys = dict(self.snapkeys)
        log.fences.clear()
        log.fences.update(self.fences)
        log.owners.clear()
        log.owners.update(self.owners)
        log.redis_epoch, log.claims = self.redis_epoch, self.claims
        for shard in list(log.history):
            log.history[shard] = log.history[shard][:self.history.get(shard, 0)]
        self.cut_back(acked)

    def restore_groups(self, log: SimLog, acked: Acknowledged, leases: dict[int, str], groups: set[int]) -> None:
        """One node of a Redis Cluster restarts from its part of this image: ``groups``' keys go back, every
        other node keeps what it holds (the claims key and the channels' too)."""
        for shard in groups:
            log.logs[shard] = copy.deepcopy(self.logs.get(shard, []))
            _restore_key(leases, self.leases, shard)
            log.fences[shard], log.owners[shard] = self.fences.get(shard, 0), self.owners.get(shard, "")
            log.history[shard] = log.history[shard][:self.history.get(shard, 0)]
        restore_shards(log.snapkeys, self.snapkeys, groups)
        self.cut_back(acked)

    def cut_back(self, acked: Acknowledged) -> None:
        """What the clients were told since the save may be gone: the model checks what was acknowledged by
        then (what a node that lost nothing holds is not checked until it is acknowledged again)."""
        acked.reservations.clear()
        acked.reservations.update(self.acked.reservations)
        acked.facts.clear()
        acked.facts.update(self.acked.facts)


def _restore_key(now: dict[int, Any], then: dict[int, Any], shard: int) -> None:
    """``shard``'s key as the image holds it (absent there: absent now)."""
    if shard in then:
        now[shard] = then[shard]
    else:
        now.pop(shard, None)


class TailLoss:
    def __init__(self, seed: int, acked: Acknowledged) -> None:
        self.rng = random.Random(f"lose-tail {seed}")  # its own stream: the other draws stay as they were
        self.acked = acked
        self.image: RedisImage | None = None
        self.restore_at: int | None = None
        self.restored_in_step = False
        self.stale = False
        """Redis came back from older data since the step's start: memory may hold what Redis lost."""
        self.check_at: set[int] = set()
        """Several processes: the ticks of this step at which the running processes' owner checks run."""
        self.groups: set[int] | None = None
        """Several processes (a Redis Cluster): the groups of the node that restarts (None: every node)."""
        self.ever_lost = False
        """Redis came back from older data at some point of this run: a part may outlive its order."""
        self.lost_since_start = False
        """One process: Redis came back from older data since this instance started: a shard may find its
        log short (``LogDiverged``). Its fences went back too, below the tokens the instance carries: a
        settle's fence still goes above them (``FENCE_SCRIPT``), so nothing it gave up on lands later."""
        self.losses = 0
        """How many times Redis came back from older data so far (``mark``, ``lost_since``)."""
        self.whole_lost = 0
        self.node_lost: dict[int, int] = {}
        """The number (``losses``) of the last restore of every node, and of the last restore of one node
        per group it took back."""
        self.witnessed: Callable[[logging.LogRecord], bool] = lambda _record: self.lost_since_start
        """Whether the instance that logged a ``LogDiverged`` (or found its claim lost) lived through a loss
        of what it made durable (``World.witnessed_loss``; several processes: each taking's, ``ClusterWorld``)."""

    def draw(self, log: SimLog, channels: SimChannelStore, leases: dict[int, str] | None = None) -> str:
        """At a step's start: save Redis's state now, or draw the tick it comes back from the saved one."""
        self.restored_in_step, self.restore_at = False, None
        if self.image is None:
            if self.rng.random() < SAVE_P:
                self.image = RedisImage.capture(log, self.acked, channels, {} if leases is None else leases)
                return "Redis state saved"
        elif self.rng.random() < RESTORE_P:
            self.restore_at = self.rng.randint(0, RESTORE_TICKS)
            return f"Redis restarts from the saved state at tick {self.restore_at}"
        return ""

    def draw_leased(self, shards: int) -> str:
        """Several processes, at a step's start: the ticks the owner checks run at (``check_due``), and
        whether the restore drawn is of one node (some groups) or of every node."""
        self.check_at = {self.rng.randint(0, RESTORE_TICKS) for _ in range(self.rng.choice(OWNER_CHECKS))}
        self.groups = None
        if self.restore_at is not None and self.rng.random() < NODE_P:
            self.groups = set(self.rng.sample(range(shards), self.rng.randint(1, shards - 1)))
            return f"only the node of groups {sorted(self.groups)} restarts"
        return ""

    def check_due(self, tick: int) -> bool:
        return tick in self.check_at

    def due(self, tick: int | None) -> bool:
        """Whether the restore happens now (``tick`` None: the step ended before its tick)."""
        return self.restore_at is not None and (tick is None or tick == self.restore_at)

    def restore(self, world: World, leases: dict[int, str]) -> None:
        """Redis restarts from the image. The connections to it break: what was sent and not yet answered
        is answered with the error (it reached the old Redis or not: either way it is not in the restored
        one), and no script on its way reaches the new one."""
        assert self.image is not None
        log, channels = world.log, world.channels
        broken = RedisConnectionError("sim: connection reset (Redis restarted)")
        if self.groups is None:
            self.image.restore(log, self.acked, channels, leases)
            log.late, channels.late = [], []
            cut, log.pending, writes, channels.pending = log.pending, [], channels.pending, []
        else:  # one node: only the connections to it break
            self.image.restore_groups(log, self.acked, leases, self.groups)
            log.tally.node_losses += 1
            log.late = [u for u in log.late if u.shard not in self.groups]
            cut = [u for u in log.pending if u.shard in self.groups]
            log.pending, writes = [u for u in log.pending if u.shard not in self.groups], []
        for unit in cut:
            if not unit.done.done():
                unit.settle(broken)  # its shard is told at once, as by ``LogStore``
        for write in writes:
            if not write.done.done():
                write.done.set_exception(broken)
        self.image, self.restore_at = None, None
        self.restored_in_step = self.stale = self.lost_since_start = self.ever_lost = True
        self.losses += 1
        if self.groups is None:
            self.whole_lost = self.losses
        else:
            self.node_lost.update(dict.fromkeys(self.groups, self.losses))
        world.log.tally.tail_losses += 1

    def mark(self) -> int:
        """Now, for ``lost_since``."""
        return self.losses

    def lost_since(self, mark: int, group: int | None) -> bool:
        """Whether Redis came back from older data after ``mark`` (``mark()`` then) taking ``group``'s keys
        back — its node's restore or every node's (None: any group's). A restore of other nodes leaves the
        group's log, snapshot, fence and owner key as they were: its shard cannot find them short."""
        if group is None:
            return self.losses > mark
        return max(self.whole_lost, self.node_lost.get(group, 0)) > mark

    def allows(self, record: logging.LogRecord) -> bool:
        """An ERROR the service logs, expected once Redis lost what it had acknowledged: a shard that
        found its log short (``LogDiverged``), the instance finding its claim lost, or a part found
        holding units for an order whose record was lost or that holds nothing (its change lost), or an order
        found missing a part Redis lost (a held one given up, a confirmed one's part made again), or recorded
        HELD with a part confirmed (its confirmation lost), or undecided with a part confirmed (its decision
        lost; given up undecided, that part kept committed), or a
        group lost to another taking whose log no longer holds what its shard made durable, or a channel stream found
        below versions the desk published (``StreamLost``: read again, ``channel_feeds_relinked``; or as it stopped)."""
        if getattr(record, "event", None) in ("order_part_orphaned", "order_part_outlived", "order_part_lost",
                                              "order_confirmation_restored", "order_decision_restored",
                                              "order_part_committed_again", "order_part_kept_committed",
                                              "acknowledged_lost"):
            return self.ever_lost  # found later
        cause = record.exc_info[1] if record.exc_info else None
        if isinstance(cause, LogDiverged) or getattr(record, "why", None) == "claim_lost" or getattr(
                record, "event", None) in ("channel_loss_found_stopping", "channel_feeds_relinked"):  # a channel loss
            return self.witnessed(record)  # the instance that logged it lived through a loss (R7)
        return False
