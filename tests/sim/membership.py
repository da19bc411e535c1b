"""Which simulated process owns which shard group: the sequences of ``app/membership.py`` over the
shared ``SimLog``, with the lease keys held here (``Leases``) instead of in Redis.

Taking a group (``take``, as ``Membership._take``): the group's lease and owner key set at once (a
new epoch: every later write of the previous owner is refused FENCED), then the shard recovered from
its snapshot and log (``engine.recovery.recover_shard``), a ``ShardActor`` built over the product's
``GroupClock`` (on from the group's newest logged stamp until the taker's clock passes it) and installed. A
graceful hand-over (``hand_over``): ``Engine.vacate`` with a final snapshot, then the lease given
back. A group lost (``_give_up``: a write refused FENCED, or a renewal finding the lease gone): the
log drops it and the engine vacates it without a snapshot, and its newest durable entry is read back
(``lost_entries.say_if_lost``: an ERROR if Redis lost it, a finding unless Redis lost a tail). A shard
that stops working (``failed``: its log found short of what it made durable) is given up alike, and its
lease given back. ``balance`` takes
free groups up to the process's share or hands one over above it, as the real one does, not counting
the live processes its ``FreeWatch`` saw leave a group free (a paused one, here); the driver
decides when each process renews and balances (``turn``) and when a dead or paused process's leases run out.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

from atp_service.app.balancing import FreeWatch, address_of, plan_balance
from atp_service.app.lost_entries import say_if_lost
from atp_service.engine.clock import GroupClock
from atp_service.engine.recovery import recover_shard
from atp_service.engine.shard import ShardActor
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.log import Fenced
from atp_service.storage.records import number_of
from tests.sim.process import Process
from tests.sim.simlog import outranks

if TYPE_CHECKING:
    from tests.sim.cluster import ClusterWorld


class Leases:
    """Each group's lease key: the holder that may own it now. A running process renews its leases in
    time, so here they run out only when the driver says (``expire``: a dead or paused holder's)."""

    def __init__(self) -> None:
        self.holder: dict[int, str] = {}
        self.taken: dict[int, str] = {}
        self.brief: set[str] = set()
        """The holders paused (or their hosts suspended) briefly now (``Disruptor``): renewed in time, their leases
        never run out, nor does one Redis restores naming them (``ClusterWorld.lose_tail``)."""
        """Each group's last taker: the world's record, which Redis losing a tail (``--lose-tail``) does not take
        back as it does ``holder`` (a lease key gone back to a holder that took nothing since)."""

    def expire(self, holder: str, group: int) -> bool:
        if self.holder.get(group) != holder:
            return False
        del self.holder[group]
        return True


class SimMembership:
    def __init__(self, proc: Process, world: ClusterWorld) -> None:
        self.proc, self.world = proc, world
        self.held: dict[int, str] = {}  # group -> the epoch it was taken with
        self.routes: dict[int, tuple[str, int]] = {}  # every group's owner as last read
        self.members: list[str] = []
        self._handing: set[int] = set()
        self._vacating: dict[int, asyncio.Task[None]] = {}
        self._turns = asyncio.Lock()  # one balance at a time, as the real loop runs them
        self.watch = FreeWatch(proc.address, 1.0)  # its time: this process's balance turns
        self._balances = 0
        self.born = world.tail.mark() if world.tail is not None else 0
        self.taken_at: dict[int, int] = {}
        """Per group, ``TailLoss.mark`` when its last taking began (``witnessed``)."""
        self.lease_lost: set[int] = set()
        """The groups whose lease key naming this process Redis took back to another holder or none (a restore from
        older data, ``ClusterWorld.lose_tail``) since their last taking here: another may take them before this
        process's renewal finds the key not its own (``suspends.stale_reads``)."""
        proc.engine.where = self.where
        proc.log.on_group_lost.append(self._fenced)
        proc.engine.on_install.append(lambda actor: actor.on_failure.append(self.failed))  # as the service wires it

    def where(self, group: int) -> tuple[str, int]:
        if group in self._handing or group in self._vacating:
            return "", 0
        if group in self.held and not self.proc.engine.actors[group].vacant:
            return self.proc.address, number_of(self.held[group])
        return self.routes.get(group, ("", 0))

    def settled(self) -> bool:
        """Nothing of this process's membership under way (a group being handed over or vacated)."""
        return not self._handing and not self._vacating and not self._turns.locked()

    # -- the periodic turn: renew, then balance --------------------------------------------
    async def turn(self) -> None:
        async with self._turns:
            try:
                await self.renew()
                await self.balance()
            except (*STORAGE_ERRORS, Fenced):
                pass  # tried again at the next turn, as ``renewing.keep_balancing`` does

    async def renew(self) -> None:
        """``Membership.renew``: a lease found another's (or gone) gives its group up; each one renewed
        extends its shard's deadline from when the renewal was sent (``Membership._renew_leases``). Here a
        deadline is past once the driver said the lease ran out by this process's own clock
        (``ClusterWorld.expire``, ``ShardActor.lease_until``): a renewal sent after that, which finds the
        lease still this process's (Redis, back from older data, gave it back), has the group answered
        again; one sent before it (the process paused with it in flight) leaves it past."""
        await self.proc.log.awake()  # sent once the process runs
        engine = self.proc.engine
        lapsed = {g: engine.actors[g] for g in self.held if engine.actors[g].lease_until == -math.inf}
        sent, sent_to = engine.lease_clock.now(), {g: engine.actors[g] for g in self.held}  # R7: from the send
        await self.proc.log.round_trip()
        self.proc.member = True
        self.members = self.world.members()
        leases = self.world.leases.holder
        for group in sorted(g for g in self.held if leases.get(g) != self.proc.holder):
            del self.held[group]
            self._give_up(group, "lease")
        for group, actor in lapsed.items():
            if group in self.held and engine.actors[group] is actor:
                actor.lease_until = math.inf
        if self.world.sleeps.finite:  # ``--suspends``: finite deadlines, as ``Membership._renew_leases``, but for
            for group, actor in sent_to.items():  # one the driver passed meanwhile (a pause with it in flight)
                if group in self.held and engine.actors[group] is actor and not actor.vacant and \
                        (actor.lease_until != -math.inf or group in lapsed):
                    actor.lease_until = self.world.sleeps.deadline(sent)

    async def balance(self) -> None:
        await self.proc.log.round_trip()
        self.routes = {g: (address_of(h), number_of(self.world.log.owners[g]))
                       for g, h in self.world.leases.holder.items()}
        self._balances += 1  # the live processes that leave groups free, taking none: ``Membership._watch_free``
        self.watch.observe(self._balances, self.world.config.shards, self.members, self.routes, self._vacating)
        if self.watch.register_anew:  # counted out by the others: a new member entry (``Membership._watch_free``)
            self.proc.entry = f"{self.proc.holder}.{self._balances}"
        give, take = plan_balance(self.proc.address, self.world.config.shards, self.members, set(self.held),
                                  self.routes, self._vacating, self.watch.out)  # the service's own decision
        if give is not None:
            await self._hand_over(give)
        for group in take:
            await self.take(group)

    # -- taking, handing over, losing ----------------------------------------------------------
    async def take(self, group: int) -> None:
        log, redis, world = self.proc.log, self.world.log, self.world
        mark = world.tail.mark() if world.tail is not None else 0  # a loss while recovering is this taking's
        started = self.proc.engine.lease_clock.now()  # R7: its lease counts from here (``Membership._take``)
        await log.round_trip()
        # GroupLeases._draw: the claimant's clock is this process's host's (``--clock-skew``)
        epoch = self.held.get(group) or redis.draw_epoch(redis.owners[group], self.proc.engine.clock.now_ms())
        await log.write_turn()
        holder = world.leases.holder.get(group)
        if holder is not None and holder != self.proc.holder:
            return  # another process was quicker
        if outranks(redis.owners[group], epoch):  # ACQUIRE_SCRIPT
            self.held.pop(group, None)
            raise Fenced(f"sim: group {group} was taken at a newer epoch than {epoch}")
        world.leases.holder[group], redis.owners[group] = self.proc.holder, epoch
        world.leases.taken[group] = self.proc.holder
        log.adopt(group, epoch, redis.fences[group])
        self.held[group] = epoch
        try:
            ledger, seq, _ = await recover_shard(log, group, world.config.limits)
        except BaseException:
            log.drop(group)
            self.held.pop(group, None)
            if not self.proc.dead:  # given back; a killed process's lease runs out instead
                world.leases.expire(self.proc.holder, group)
            raise
        world.log.tally.taken_ahead += ledger.clock > self.proc.engine.clock.now_ms()
        clock = GroupClock(self.proc.engine.clock, ledger.clock)  # R6: as ``Membership._take`` (never below
        settings = self.proc.shard_settings or world.config.shard_settings
        actor = ShardActor(group, ledger, log, clock, settings, seq)  # its previous owner's)
        if world.sleeps.finite:
            actor.lease_until = world.sleeps.deadline(started)
        self.proc.engine.install(actor)
        self.taken_at[group] = mark
        self.lease_lost.discard(group)
        actor.start()  # the engine's housekeeping timer is not run: the driver runs maintenance
        world.log.tally.takeovers += 1

    async def hand_over(self, group: int) -> None:
        """A graceful hand-over the driver asks for (``balance`` hands over above the share)."""
        async with self._turns:
            if group in self.held:
                await self._hand_over(group)

    async def _hand_over(self, group: int) -> None:
        self._handing.add(group)
        try:
            await self.proc.engine.vacate(group, snapshot=True)
            self.proc.log.drop(group)
            await self._release(group)
        finally:
            self._handing.discard(group)
        self.world.log.tally.hand_overs += 1

    async def _release(self, group: int) -> None:
        await self.proc.log.write_turn()
        self.world.leases.expire(self.proc.holder, group)
        self.held.pop(group, None)

    async def stop(self) -> None:
        """``Membership.stop``: the process leaves the members, then hands every group over."""
        async with self._turns:
            self.proc.member = False
            for group in sorted(self.held):
                try:
                    await self._hand_over(group)
                except (*STORAGE_ERRORS, Fenced):
                    pass  # its lease runs out instead

    def _fenced(self, group: int) -> None:
        self.held.pop(group, None)
        self._give_up(group, "fenced")

    def witnessed(self, group: int | None) -> bool:
        """R7: whether a shard of this process may have found ``group``'s log short of what it made durable
        (``LogDiverged``, documented as Redis having lost acknowledged entries): only if Redis took the
        group's keys back (every node's restore or its node's) after its taking began. A shard knows durable
        only what it recovered or appended since; a taking begun after the loss recovered the log as Redis
        holds it then — a pause across the loss is no new taking, and a group handed over is the taker's
        own taking. ``group`` None, or one no longer taken here: any loss since this process started."""
        tail = self.world.tail
        if tail is None:
            return False
        if group is None or group not in self.taken_at:
            return tail.lost_since(self.born, None)
        return tail.lost_since(self.taken_at[group], group)

    def failed(self, actor: ShardActor) -> None:
        """``Membership.failed``: a shard that stopped working is given up, its lease given back after the
        vacate (if it is still this taking's), to be recovered from the log by whoever takes it next."""
        if (epoch := self.held.pop(actor.shard, None)) is not None:
            self.world.log.tally.tail_restarts += 1
            self._give_up(actor.shard, "failed", epoch)

    def _give_up(self, group: int, why: str, release: str | None = None) -> None:
        """``release``: the epoch of the taking whose lease is given back once the group is vacated."""
        if group in self._vacating:
            return  # given up already (``Membership._give_up``)
        self.world.log.tally.given_up += 1
        self.proc.log.drop(group)
        task = self.proc.spawn(self._vacate(group, release, why))
        self._vacating[group] = task
        task.add_done_callback(self.proc._seen)  # the real one only marks its error seen: here it is a finding
        task.add_done_callback(lambda t: self._vacating.pop(group, None) if self._vacating.get(group) is t else None)

    async def _vacate(self, group: int, release: str | None, why: str) -> None:
        actor = self.proc.engine.actors[group]
        await self.proc.engine.vacate(group, snapshot=False)
        if why in ("lease", "fenced") and isinstance(actor, ShardActor):  # did Redis keep what it acknowledged?
            await say_if_lost(self.proc.log, actor, why, self.proc.engine.metrics)
        if release is None:
            return
        await self.proc.log.write_turn()  # RELEASE_SCRIPT: this holder's lease, the owner key this taking's
        if self.world.log.owners[group] == release:
            self.world.leases.expire(self.proc.holder, group)


def leases_lost(world: ClusterWorld, named: dict[int, str]) -> None:
    """Redis back from older data (``ClusterWorld.lose_tail``): each live process whose lease key it took back to
    another holder or none (``named``: the keys before the restore) lost that lease (``lease_lost``); a key restored
    naming it still is the lease it holds (R7)."""
    for group, holder in named.items():
        if world.leases.holder.get(group) != holder:
            for proc in world.processes:
                if proc.holder == holder and not proc.dead and proc.membership is not None:
                    proc.membership.lease_lost.add(group)
