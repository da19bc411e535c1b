"""This process's share of a keyspace's shard groups when several processes serve it (``ownership = leases``).

Each process registers in ``<prefix>members`` (a sorted set of live processes, each entry expiring
unless renewed) and owns about its share of the groups, ``ceil(groups / live processes)``: it takes
free groups up to its share and hands the excess over gracefully (the group's work drained, a final
snapshot, the lease given back), one group at a time. A group whose lease ran out (its owner died or
was paused) is free: whoever takes it raises its owner key first (``leases.GroupLeases``), so every
write of the previous owner is refused from then on, then recovers it from its snapshot and log.

Leases decide availability only. Safety comes from the owner key every write script checks; and
a process stops answering for a group — reads included — once its lease may have run out by its
own clock (``SAFETY`` of the lease after the renewal was sent), before anyone else may take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Any

from atp_service.app.balancing import FreeWatch, address_of, plan_balance, preference
from atp_service.app.handing import NotRecovered, first_share, hand_over_all, lost_in_recovery
from atp_service.app.lost_entries import say_if_lost
from atp_service.app.renewing import keep_balancing, keep_renewing
from atp_service.app.shared_address import MEMBERS_SCRIPT, SharedAddressWatch, refuse_if_shared
from atp_service.config import ServiceConfig
from atp_service.edge.fits import routing_refusal
from atp_service.edge.routing import Route, RoutingTable
from atp_service.engine.clock import CountingClock, GroupClock
from atp_service.engine.recovery import Retrying, once, recover_shard
from atp_service.engine.router import Engine
from atp_service.engine.shard import ShardActor
from atp_service.metrics import EngineMetrics, MembershipMetrics
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.leases import GroupLeases
from atp_service.storage.log import Fenced, LogStore
from atp_service.storage.nodes import Call
from atp_service.storage.records import number_of
from atp_service.storage.resp import as_text
from atp_service.tasks import all_kept_ended, cancel_and_wait, exception_seen, keep

log = logging.getLogger(__name__)

SAFETY = 0.8
"""Of a lease, counted from when its renewal was sent: past it the group is not answered for."""


class Membership:
    """Takes, keeps and gives up ``engine``'s groups under leases."""

    def __init__(self, engine: Engine, store: LogStore, config: ServiceConfig, clock: CountingClock,
                 metrics: MembershipMetrics, engine_metrics: EngineMetrics,
                 must_stop: Callable[[], None] = lambda: None) -> None:
        self._engine, self._store, self._config, self._clock = engine, store, config, clock
        self._metrics, self._engine_metrics = metrics, engine_metrics
        self._not_recovered = NotRecovered(log, metrics.recoveries_failed)  # a taking whose recovery failed: said
        self.address = config.advertised
        self.leases = GroupLeases(store, f"{self.address}|{secrets.token_hex(6)}", config.lease_ms)
        self._lease_s, self._balance_s = config.lease_ms / 1000, (config.balance_ms or config.lease_ms / 3) / 1000
        self.watch = FreeWatch(self.address, self._balance_s)
        metrics.groups_free.set(math.nan)  # unknown until its first read of the owners
        self.routes: dict[int, tuple[str, int]] = {}
        """Every group's owner as last read: (address, epoch); absent: none."""
        self.members: list[str] = []
        self.on_routes: list[Callable[[RoutingTable], None]] = []
        """Told every routing table read (each balance)."""
        self._address_watch = SharedAddressWatch(self.address, self.leases.holder, must_stop)  # armed: the start's
        self._entry, self._retired = self.leases.holder, ""  # its member entry; one it left (registered anew)
        self._answered = True  # the last members call's answer heard (lost: the next is told whether it added anew)
        self._leaving = False  # stopping: its entry removed at each renewal, not renewed
        self._renewing = asyncio.Lock()  # one renewal at a time: a stop's removal lands after any under way
        self._handing: set[int] = set()
        self._work: set[asyncio.Task[None]] = set()
        self._renewed_at: dict[int, float] = {}  # group -> when its last renewal was sent
        self._vacating: dict[int, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._longest = self.address  # the longest member address GetRouting's bound was checked with
        self._replayed = 0  # log entries the groups taken here replayed: the start's, atp_recovery_entries
        engine.where = self.where
        store.on_group_lost.append(self._fenced)

    # -- routing ------------------------------------------------------------------------
    def where(self, group: int) -> tuple[str, int]:
        """Who serves ``group`` as far as this process knows: ("", 0) while none does (or this one is handing it
        over, or no longer answers for it: its lease unrenewed past ``SAFETY``, where naming itself would send its
        callers straight back, for as long as the renewals fail); the owner last read where that is another."""
        if group in self._handing or group in self._vacating:
            return "", 0
        actor = self._engine.actors[group]
        if group in self.leases.held and not actor.vacant and actor.lease_until >= self._engine.lease_clock.now():
            return self.address, number_of(self.leases.held[group])
        route = self.routes.get(group, ("", 0))
        return ("", 0) if route[0] == self.address else route  # read before this process gave it up

    def table(self) -> RoutingTable:
        """Every group's route as this process knows it now (``GetRouting``)."""
        shards = self._config.shards
        return RoutingTable(shards, self.address, tuple(Route(g, *self.where(g)) for g in range(shards)))

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self, retrying: Retrying = once) -> None:
        """Register, refuse an address another live process advertises (``shared_address``), take a first share
        of the groups (recovered before this returns), then keep renewing and rebalancing in the background.
        ``retrying`` runs the first balance: the start's waits for Redis (a balance may be repeated)."""
        if missing := await self.renew():
            self._metrics.renewal_failures.inc()
            log.warning("starting: %s", missing)  # the balance's takings are retried by ``retrying``
        loop = asyncio.get_running_loop()
        # Renewing runs while the first share is recovered (the groups taken first must not run out while the
        # later ones are), and while another entry at this address is waited out (its process must see ours).
        renewing = loop.create_task(keep_renewing(self.renew, self._lease_s, self._metrics.renewal_failures,
                                                  failed_first=bool(missing)), name="leases-renew")
        try:
            await refuse_if_shared(self._store, self.address, self.leases.holder, self._config.lease_ms)
            self._address_watch.armed = True
            await retrying(lambda: first_share(self.balance, lambda: bool(self.leases.held), log))
        except BaseException:
            await cancel_and_wait(renewing)
            raise
        self._engine_metrics.recovered_entries.set(self._replayed)  # the first share's, as atp_recovery_seconds
        self._tasks = [renewing, loop.create_task(keep_balancing(self.balance, self._balance_s), name="leases-balance")]

    async def stop(self) -> None:
        """Leave the members, then hand every group over (drained, snapshotted, lease given back), the leases not
        handed over yet renewed meanwhile. Left first, it is live only by the groups it still holds: the others
        take what it hands over up to their shares at once (``plan_balance``). Last, its stray leases are given
        back (``GroupLeases.give_back_strays``): no balance comes after to find them."""
        renewing, balancing = self._tasks or (None, None)
        await cancel_and_wait(balancing)
        self._leaving = True  # out of the members first: the others keep nothing free for it (plan_balance)
        with contextlib.suppress(*STORAGE_ERRORS, Fenced):  # else its next renewal removes it
            if missing := await self.renew():
                log.warning("leaving: %s; the renewals go on until every group is handed over", missing)
        await all_kept_ended(self._work)  # hand-overs and give-ups under way end first
        await self.leases.given_back()  # and leases given back after a cancelled taking
        await hand_over_all(sorted(self.leases.held), self._hand_over, log)
        await all_kept_ended(self._work)  # a group given up meanwhile (its shard failed): its lease given back
        with contextlib.suppress(*STORAGE_ERRORS):  # no balance comes after: a stray lease given back now
            await self._read_routes()
            await self.leases.given_back()
        await cancel_and_wait(renewing)
        with contextlib.suppress(*STORAGE_ERRORS):  # else its entry times out
            await self._store.nodes.run_one(Call(MEMBERS_SCRIPT, [self._store.keys.members],
                                                 [self._entry, 0, self._retired]))

    # -- keeping ----------------------------------------------------------------------------
    async def renew(self) -> str:
        """Stay a member, and extend every lease held; a group whose lease is gone is given up. A
        member counts for one lease, as its leases do: a process killed no longer holds back the
        others' shares (``plan_balance``) once its leases have run out. Stopping, it removes its entry
        instead. Returns what was left unrenewed (Redis slow or away): '' when nothing was."""
        async with self._renewing:
            return await self._renew()

    async def _renew(self) -> str:
        sent = self._engine.lease_clock.now()  # R7: the deadlines count on every clock of the host, from the send
        # The members and the leases at once: a renewal while Redis stalls costs one timeout, not two,
        # and the shards stop answering SAFETY into a lease after the last renewal sent.
        parts = await asyncio.gather(self._renew_members(), self._renew_leases(sent), return_exceptions=True)
        missing = []
        for part in parts:
            if isinstance(part, BaseException):
                raise part  # a bug: every error of Redis's is told as a string
            missing += [part] if part else []
        return "; ".join(missing)

    async def _renew_leases(self, sent: float) -> str:
        """The leases extended (their shards' deadlines from ``sent``); those found lost given up at once, not
        after the members' half: a balance meanwhile took a lost group still served here again, and its new
        lease stayed held and renewed, nothing serving it. '' when every lease was renewed, else what was not."""
        try:
            lost = await self.leases.renew()
        except (*STORAGE_ERRORS, Fenced) as exc:
            return f"leases: {exc!r}"
        for group, epoch in lost.items():
            if self.leases.drop(group, epoch):
                self._give_up(group, "lease")
        for group in self.leases.renewed:
            self._renewed_at[group] = sent  # a group still being recovered takes it at install
            self._engine.actors[group].lease_until = sent + self._lease_s * SAFETY
        if unrenewed := set(self.leases.held) - self.leases.renewed:  # or taken since: renewed again soon
            return f"{len(unrenewed)} of {len(self.leases.held)} leases (groups {sorted(unrenewed)[:8]})"
        return ""

    async def _renew_members(self) -> str:
        """This process's entry in the members renewed (removed, leaving), and the members read; '' when done,
        else why not (the last list read stands): its node failing over must not let every lease lapse."""
        retired, ttl = self._retired, 0 if self._leaving else self._config.lease_ms
        answered, self._answered = self._answered, False  # until answered: it may run, adding the entry anew
        try:
            added, members = await self._store.nodes.run_one(Call(
                MEMBERS_SCRIPT, [self._store.keys.members], [self._entry, ttl, retired, int(answered)]))
        except STORAGE_ERRORS as exc:
            return f"members: {exc!r}"
        self._answered = True
        self.members = [as_text(m) for m in members]
        self._check_routing()
        self._address_watch.check(self.members, anew=bool(added) and not retired)  # its entry had lapsed: back late
        if self._retired == retired:  # not registered anew again meanwhile
            self._retired = ""
        self._metrics.members.set(len(self.members))
        return ""

    def _check_routing(self) -> None:
        """A member's address longer than any before: GetRouting's answer here, every group at it, checked against
        ``max_message_bytes``; past it, said at ERROR once per address (routing clients could not read it)."""
        longest = max((address_of(m) for m in self.members), key=len, default=self.address)
        if len(longest) <= len(self._longest):
            return
        self._longest, cfg = longest, self._config
        if (refusal := routing_refusal(cfg.shards, self.address, cfg.max_message_bytes, longest)) is not None:
            log.error("process %s joined: %s", longest, refusal, extra={
                "event": "routing_too_large", "peer": longest, "shards": cfg.shards, "limit": cfg.max_message_bytes})

    def _fenced(self, group: int) -> None:
        """A write of ``group`` was refused: another process took it."""
        self.leases.held.pop(group, None)
        self._give_up(group, "fenced")

    def failed(self, actor: ShardActor) -> None:
        """A shard stopped working (a bug, or a log it cannot trust): its memory is not to be trusted,
        its log is. Its group is given back, to be recovered from the log by whoever takes it next
        (this process included); the process's other groups go on being served."""
        if (epoch := self.leases.held.pop(actor.shard, None)) is not None:
            self._give_up(actor.shard, "failed", release=True, epoch=epoch)

    def _give_up(self, group: int, why: str, release: bool = False, epoch: str | None = None) -> None:
        if group in self._vacating:
            return  # given up already; its shard is being vacated
        log.warning("group %d: lost (%s); no longer served here", group, why,
                    extra={"event": "group_lost", "group": group, "why": why})
        self._metrics.given.labels(why).inc()
        self._store.drop(group)
        task = self._own(self._vacate(group, release, epoch, why))
        self._vacating[group] = task
        task.add_done_callback(lambda _t: self._vacating.pop(group, None) if self._vacating.get(group) is _t else None)
        self._metrics.groups_owned.set(len(self.leases.held))

    async def _vacate(self, group: int, release: bool, epoch: str | None, why: str) -> None:
        actor = self._engine.actors[group]
        await self._engine.vacate(group, snapshot=False)
        if why in ("lease", "fenced") and isinstance(actor, ShardActor):  # did Redis keep what it acknowledged?
            await say_if_lost(self._store, actor, why, self._engine_metrics)
        if release:
            with contextlib.suppress(*STORAGE_ERRORS):  # else its lease runs out
                await self.leases.release(group, epoch)

    def _own(self, work: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = keep(self._work, work)
        task.add_done_callback(exception_seen)
        return task

    # -- balancing ----------------------------------------------------------------------------
    async def balance(self) -> None:
        """Read who owns what; take free groups up to this process's share, or hand one over above it."""
        await self._read_routes()
        self._tell_routes()
        self._watch_free()
        give, take = plan_balance(self.address, self._config.shards, self.members, set(self.leases.held),
                                  self.routes, self._vacating, self.watch.out)
        if give is not None:
            await self._hand_over(give)
        refused: list[BaseException] = []
        for group in take:  # one refused (its slot migrating, its node away) keeps no later one from being taken
            try:
                await self._take(group)
            except Fenced:  # another taking won it (outranked, or as it was recovered: said): nothing wrong, not raised
                self._not_recovered.said_last()  # forgotten: its frames hold the state its recovery restored
            except Exception as exc:  # its data refused for good (UNRECOVERABLE), or a bug: said and counted, given
                said = self._not_recovered.said_last() is exc  # back (NotRecovered); the later free groups taken
                if isinstance(exc, STORAGE_ERRORS):  # all the same (liveness: every one served that can
                    refused.append(exc)  # be); Redis's refusals raised after them, for the balance's caller
                elif not said:  # a bug before its recovery (taking its lease)
                    self._not_recovered.say(group, exc)
        if refused:
            raise refused[0]

    def _tell_routes(self) -> None:
        """The routes read told to each hook (the calls forwarded to an owner that lost its group end now,
        ``edge.owner_watch``). One failing (a bug) is said and the balance goes on: raised, it ended every balance
        before its plan, no free group taken nor any handed over for as long as it failed (liveness)."""
        table = self.table()
        for told in self.on_routes:
            try:
                told(table)
            except Exception as exc:
                log.exception("a routes hook failed (%r); the balance goes on", told,
                              extra={"event": "routes_hook_failed", "error": repr(exc)})

    def _watch_free(self) -> None:
        """Counts out of the shares a live process that leaves groups free, taking none (an earlier
        release's in a rolling upgrade, one whose takings fail): its part is taken by the others
        (liveness: every group served by a live process), and handed back once it is seen taking again."""
        out, again = self.watch.observe(time.monotonic(), self._config.shards, self.members, self.routes,
                                        self._vacating)
        for c in out:
            held = f"held above the share by {c.held_by}" if c.held_by else "free"
            log.warning("group %d: %s for %.1fs while %s, below its share, took nothing: it is counted out of "
                        "the shares and the others take its part", c.group, held, c.free_for, c.address,
                        extra={"event": "peer_not_taking", "group": c.group, "peer": c.address,
                               "free_ms": round(c.free_for * 1000), "held_by": c.held_by})
        for address in again:
            log.info("%s is counted in the shares again", address,
                     extra={"event": "peer_taking_again", "peer": address})
        if self.watch.register_anew:  # counted out by the others (FreeWatch.register_anew): a new entry
            self._retired = self._retired or self._entry  # counts it again; the lease holder stays
            self._entry = f"{self.leases.holder}.{secrets.token_hex(3)}"  # address_of: the part before '|'
            log.warning("below its share with no group free for it: registered anew, to be counted in the shares",
                        extra={"event": "registered_anew", "groups": len(self.leases.held)})
        self._metrics.not_taking.set(len(self.watch.out))

    async def _read_routes(self) -> None:
        n, keys = self._config.shards, self._store.keys
        # One key of a slot per read: one of two keys absent in a migrating slot, Redis refuses the read TRYAGAIN.
        try:
            values = [*await self._store.values_of([self.leases.key(g) for g in range(n)]),
                      *await self._store.values_of([keys.owner(g) for g in range(n)])]
        except BaseException:  # unknown, not the count read last: a stale one raised ATPGroupsUnserved, or hid it
            self._metrics.groups_free.set(math.nan)  # NaN: Prometheus' max passes over it
            raise
        self.routes = {g: (address_of(as_text(values[g])), number_of(values[n + g])) for g in range(n)
                       if values[g] is not None}
        self._metrics.groups_free.set(n - len(self.routes))  # held by none: past a balance or so, served by none
        for group in self.leases.give_back_strays(values[:n], values[n:], self._handing | self._vacating.keys()):
            log.warning("group %d: its lease is this process's, yet no taking here holds it (a taking's answer lost, "
                        "its grant late); given back", group, extra={"event": "stray_lease", "group": group})
            self._metrics.given.labels("stray").inc()

    async def _take(self, group: int) -> None:
        if not self._engine.actors[group].vacant:  # a group served here stays held until given up: a bug
            log.error("group %d: free to take, yet served here; given up, to be taken anew", group)
            self._give_up(group, "unheld")
            return
        started, began = self._engine.lease_clock.now(), time.monotonic()  # the lease's count, the taking's length
        if self._address_watch.stepping_down or not await self.leases.acquire(group):
            return  # another process was quicker, or this one stops (another serves at its address)
        epoch = self.leases.held[group]
        try:
            ledger, seq, replayed = await recover_shard(self._store, group, self._config.limits)
            clock = GroupClock(self._clock, ledger.clock)  # R6: on from its previous owner's stamps, till passed
            actor = ShardActor(group, ledger, self._store, clock, self._config.shard_settings, seq,
                               self._engine_metrics, snapshot_seq=seq - replayed)
        except BaseException as exc:
            self._not_recovered.say(group, exc)
            self._store.drop(group)
            with contextlib.suppress(*STORAGE_ERRORS):  # never renewed again; unanswered, the lease runs out
                await self.leases.release(group, epoch)  # what ended the recovery is what the caller hears
            raise
        actor.lease_until = max(started, self._renewed_at.get(group, started)) + self._lease_s * SAFETY
        if self.leases.held.get(group) != epoch or group in self._vacating:
            log.warning("group %d: lost while it was recovered; not served here", group, extra=lost_in_recovery(group))
            return  # given up meanwhile (its lease gone, or a write refused): never installed
        try:
            self._engine.install(actor)
        except Exception as exc:  # a bug (a hook): given up as a failed recovery is, never held with nothing serving
            self._not_recovered.say(group, exc)  # it (the actor may be in place, never started: calls wait it out)
            if self.leases.held.pop(group, None) is not None:
                self._give_up(group, "failed", release=True, epoch=epoch)
            raise
        self._replayed += replayed
        took_s, number = time.monotonic() - began, number_of(epoch)
        self._metrics.taken.inc()
        self._metrics.take_seconds.observe(took_s)
        self._metrics.groups_owned.set(len(self.leases.held))
        log.info("group %d: taken at epoch %d, %d log entries replayed in %.2fs", group, number, replayed, took_s,
                 extra={"event": "group_taken", "group": group, "epoch": number, "entries": replayed,
                        "duration_ms": round(took_s * 1000)})

    async def _hand_over(self, group: int, snapshot: bool = True) -> None:
        """Give ``group`` up gracefully (drained, final snapshot, lease given back) in a task its caller cannot stop."""
        await asyncio.shield(self._own(self._hand_over_now(group, snapshot)))

    async def _hand_over_now(self, group: int, snapshot: bool) -> None:
        self._handing.add(group)
        try:
            try:
                await self._engine.vacate(group, snapshot=snapshot)
            finally:  # given back even without its final snapshot: the next owner replays more, that is all
                self._store.drop(group)
                await self.leases.release(group)
        finally:
            self._handing.discard(group)
        self._metrics.given.labels("handed_over").inc()
        self._metrics.groups_owned.set(len(self.leases.held))
        log.info("group %d: handed over", group, extra={"event": "group_handed_over", "group": group})


__all__ = ["Membership", "address_of", "plan_balance", "preference"]
