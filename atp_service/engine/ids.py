"""R5 across processes (``ownership = leases``): one record per reservation id, whichever process
a Reserve reaches.

A process routes an id it knows to its record (``Routes.homes``); one it does not know it claims first
(``storage.ids``): the claim names the id's home group, the first one made for the id. A Reserve whose
home is the claim's goes on as in one process (a retry meets its record, a concurrent attempt its
twin, on the home's actor). A Reserve whose home is another group is refused ``RESERVATION_ID_REUSED``
naming ``lines`` — its lines are not the record's, or the home would be the same — and holds nothing.
Redis not answering the claim: refused UNAVAILABLE (STORAGE_UNREACHABLE), nothing decided (R7): a
retry claims again, and the claim, made or not, answers it alike. A Reserve whose home this process
does not serve makes no claim: it is refused ``Moved`` as before, and its home's owner claims. What
is known here changes with the groups served: a Reserve is decided in the same turn as its check (a
stream's batch checked again after its waits, ``claimed``; its orders spanning groups at their start).

How long a claim lives. Made, it outlives the record's memory window when nothing changes the record's
life: its TTL, then ``retention_ms`` after it is resolved, plus ``CLAIM_MARGIN_MS`` (an expiry found by
housekeeping late, a group without an owner a while). A record that lives longer — a confirmed one has
no expiry — has its claim extended by a sweep over every record this process serves, once per
``REFRESH_EVERY_S`` (``refresh_step``, a slice per housekeeping pass), and over a group's as soon as it is
taken (``_taken``: where processes restart within the hour, a round may never come); the sweep also makes a claim
Redis lost again (restored from older data) and the claims of records made before claims were. So a
claim lasts while its record is remembered, and past it at most its last extension (bounded memory:
one key per id of the last day or so; ``docs/OPERATIONS.md``). A claim outliving its record, or left
by an attempt that decided nothing, refuses a reuse of its id with lines of another home until it
expires: conservative, never a second record. Claims are in Redis: a group taken over has nothing
to rebuild; the single-process path (``ownership = keyspace``) has no claims at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from atp_service.engine.capacity import record_refusal
from atp_service.engine.fanout import count_refused
from atp_service.engine.maintenance import expires_alone
from atp_service.engine.messages import refused_for_memory
from atp_service.storage.durability import STORAGE_ERRORS
from atp_service.storage.ids import IdClaims
from atp_service.storage.resp import out_of_memory
from atp_service.tasks import cancel_for_good, keep
from reservation import (
    AlreadyExists,
    DomainError,
    Ledger,
    Moved,
    Reason,
    Reservation,
    ReserveCommand,
    State,
    Unavailable,
)
from reservation._orders import order_of

if TYPE_CHECKING:
    from atp_service.engine.router import Engine
    from atp_service.engine.shard import ShardActor

log = logging.getLogger(__name__)
CLAIM_MARGIN_MS = 3_600_000
"""How long a claim outlives its record's window: an expiry housekeeping finds late, a group whose
owner is away, clocks apart (a claim's time counts on Redis's clock, a record's on the service's)."""
REFRESH_EVERY_S = 3600.0
"""How often every record served here has its claim extended (a sweep, ``refresh_step``)."""
REFRESH_PER_PASS = 1000
"""Records one housekeeping pass looks at, at most, kept or skipped (so at most this many claims
extended, one round trip): a sweep of a million records takes a thousand passes, never one long turn
or one huge pipeline. Counted over the records looked at, not the claims sent: a group of millions
of parts (whose orders are homed elsewhere) was looked through in one turn, seconds of a stall."""
CLAIM_PASSES = 4
"""Rounds of claims one batch makes at most (``claimed``): its first, then one per time groups moved
under it while it waited. Each item is claimed for good once (a second claim names the first home),
so only groups moving again and again, or Redis losing claims, goes on; past this the items still
moving are refused ``GROUP_MOVED`` (``still_moving``), nothing decided: a retry claims again."""


def other_lines(reservation_id: str, held: int) -> AlreadyExists:
    """R5: the id's record has other lines (its home, the claim's group, is not this Reserve's)."""
    return AlreadyExists("lines", f"reservation {reservation_id!r} exists with different lines (its record is in "
                                  f"group {held})")


def still_moving(home: int) -> Moved:
    """A Reserve whose home moved under it ``CLAIM_PASSES`` times while its batch was claimed: refused
    as a group being taken over is (``GROUP_MOVED`` naming ``home``, no owner yet), the caller retries."""
    return Moved(home, "")


class IdGuard:
    """The claims of the ids a leased engine decides Reserves of, and their sweep."""

    def __init__(self, engine: Engine, claims: IdClaims) -> None:
        self._engine, self.claims = engine, claims
        self._decide = engine.reserve  # the engine's own, before it is replaced by ``reserve``
        self.refresh_every_s = REFRESH_EVERY_S
        self._next_round = time.monotonic() + REFRESH_EVERY_S  # claims made here cover the first one...
        self._shards: deque[int] = deque()  # the sweep's shards still to do this round
        engine.on_install.append(self._taken)  # ...and those of a group taken, its sweep begun at once
        self._ids: deque[str] = deque()  # ...and the ids of the one under way
        self._shard = -1
        self._refreshing: set[asyncio.Task[None]] = set()
        self._turn: asyncio.Future[None] | None = None  # the last batch's turn to hand on (``claimed``)

    async def reserve(self, cmd: ReserveCommand) -> tuple[Reservation, bool]:
        """The engine's ``reserve`` where several processes share the keyspace (the engine sets it as
        its own): the id claimed first (``check``), then decided as in one process."""
        try:
            await self.check(cmd)
        except DomainError as exc:  # refused before it was decided: counted as the engine counts its own refusals
            count_refused(self._engine.metrics, exc)
            raise
        return await self._decide(cmd)

    async def claimed(self, cmds: Sequence[ReserveCommand], out: list[Any]) -> list[tuple[int, ReserveCommand]]:
        """``check_many``: each refusal put at its index in ``out``; the (index, command) of the rest.
        Batches are handed on in the order they came, as in one process: a stream's batches reach
        their shards in order, so a later item never takes units an earlier one was decided against.
        Without the turn a batch with nothing to claim, or whose claims came back first, overtook one
        still waiting for its claims. The caller hands on synchronously after this returns."""
        before, mine = self._turn, asyncio.get_running_loop().create_future()
        self._turn = mine
        try:
            claimed: dict[int, int] = {}
            refused = await self.check_many(cmds, claimed)
            if before is not None:
                await asyncio.shield(before)  # the batch before handed on (or gone): never cancelled from here
            # A group handed over or taken while this waited: an id known here at the check (nothing
            # claimed, its record decided) may be known no longer, homed now by its lines where no claim
            # vouched for it — decided there, a second record of the id (R5). Claimed now, till none is.
            for passes in range(1, CLAIM_PASSES + 1):
                again = {i: home for i, cmd in enumerate(cmds)
                         if i not in refused and (home := self.home_to_claim(cmd)) not in (None, claimed.get(i))}
                if not again:
                    break
                if passes == CLAIM_PASSES:
                    refused.update((i, still_moving(home)) for i, home in again.items())
                    break
                refused.update(await self.check_many(cmds, claimed, list(again)))
        finally:
            _pass_turn(before, mine)
        for i, refusal in refused.items():
            out[i] = refusal
        return [(i, cmd) for i, cmd in enumerate(cmds) if i not in refused]

    def home_to_claim(self, cmd: ReserveCommand) -> int | None:
        """The home of a Reserve whose id must be claimed first: not known here, and served here."""
        engine = self._engine
        if cmd.reservation_id in engine.routes.homes:
            return None  # its record (or an attempt that claimed) is here: the record decides
        home = engine.routes.placement(cmd)[1]
        return None if engine.actors[home].vacant else home

    def _ask(self, cmd: ReserveCommand, home: int) -> tuple[asyncio.Future[int], DomainError | None]:
        """The id's claim asked for; or, where its home is at a bound on the reservations it remembers,
        only looked at, with the refusal the shard would give (a claim outlives its Reserve a day or
        so: at a full shard a flood of new ids grew Redis by a key a call, all of them refused). Looked
        at, not refused outright: an id whose claim names another group is another record's (R5). A
        home whose turn may make room is asked in its turn (``_room_in_turn``)."""
        engine = self._engine
        records = 2 if engine.orders is not None and len(engine.routes.placement(cmd)[0]) > 1 else 1
        ledger = engine.actors[home].ledger
        full = record_refusal(ledger, engine.limits, records)  # a saga's order: its part too
        if full is not None and not self._room_in_turn(ledger, home, full):
            return self.claims.look(cmd.reservation_id), full
        return self.claims.claim(cmd.reservation_id, home, self._ttl_ms(cmd)), None

    def _room_in_turn(self, ledger: Ledger, home: int, full: DomainError) -> bool:
        """Whether the home's turn may grant what ``full`` refuses here: the bound is on live records and a
        hold there is past its TTL that the turn expires first (``expire_alone``) — a hold past its TTL is
        not live when a Reserve is decided (R2, R3), and refused here for it the Reserve was granted by one
        process, not by several. Not where the queue's due entries are only stale ones (holds confirmed,
        released, given another TTL: confirmed ones count live) and orders (each expired by its saga, from a
        housekeeping pass: passed over, as the turn passes over them), nor at the bound on resolved records (an
        expiry adds one): claimed there, a flood of new ids grew Redis by a key a call again, each refused by
        the turn."""
        if full.metadata.get("limit") != "max_live_reservations_per_shard":
            return False
        return ledger.due_first(self._engine.now_at(home), expires_alone(home, self._engine.place)) is not None

    def _refusal(self, reservation_id: str, home: int, held: int, full: DomainError | None) -> DomainError | None:
        """What the claim's answer (``held``: -1 where only looked at and none held) refuses: an id of
        a record of other lines names ``lines`` whether the home is full or not; else the bound."""
        if held != home and held >= 0:
            return other_lines(reservation_id, held)
        if full is not None:
            self._engine.count_capacity_refusal(full)
        return full

    def _ttl_ms(self, cmd: ReserveCommand) -> int:
        return cmd.ttl_ms + self._engine.limits.retention_ms + CLAIM_MARGIN_MS

    async def check(self, cmd: ReserveCommand) -> None:
        """Raises the refusal of a Reserve whose id names a record of other lines, whose home is full,
        or whose claim Redis did not answer; returns when the Reserve may be decided."""
        home = self.home_to_claim(cmd)
        if home is not None:
            claim, full = self._ask(cmd, home)
            refusal = self._refusal(cmd.reservation_id, home, await claim_answer(claim), full)
            if refusal is not None:
                raise refusal

    async def check_many(self, cmds: Sequence[ReserveCommand], claimed: dict[int, int] | None = None,
                         only: Sequence[int] | None = None) -> dict[int, DomainError]:
        """``check`` of each of ``cmds`` (of those at the indices ``only``), the claims in one round trip:
        the refusal of each refused (by index); ``claimed``: the home each claim was asked for noted."""
        asked: dict[int, tuple[int, asyncio.Future[int], DomainError | None]] = {}
        for i in range(len(cmds)) if only is None else only:
            home = self.home_to_claim(cmds[i])
            if home is not None:
                asked[i] = home, *self._ask(cmds[i], home)
                if claimed is not None:
                    claimed[i] = home
        answers = await asyncio.gather(*(claim_answer(claim) for _, claim, _ in asked.values()), return_exceptions=True)
        refused: dict[int, DomainError] = {}
        for (i, (home, _, full)), held in zip(asked.items(), answers, strict=True):
            if isinstance(held, DomainError):
                refused[i] = held
            elif isinstance(held, BaseException):
                raise held
            elif (refusal := self._refusal(cmds[i].reservation_id, home, held, full)) is not None:
                refused[i] = refusal
        return refused

    # -- the sweep ------------------------------------------------------------------------------------
    def refresh_step(self) -> None:
        """One housekeeping pass's share of the sweep (``REFRESH_PER_PASS`` claims, one round trip at a
        time): a round starts every ``refresh_every_s``, over every shard served then and not queued already,
        whatever the sweep has still to do; a group taken is swept at once (``_taken``). A round began only
        once the queue was empty: groups taken again before their sweeps ended (a process in a crash loop,
        groups of millions of records) held it off for good, and the claims of the groups served all along
        were extended no more (R5)."""
        if self._refreshing:
            return
        now = time.monotonic()
        if now >= self._next_round:  # whatever is queued: groups taken faster than swept held every round off
            self._next_round = now + self.refresh_every_s
            queued = self._shards
            queued.extend(a.shard for a in self._engine.actors if not a.vacant and a.shard not in queued)
        batch = self._next_batch()
        if batch:
            keep(self._refreshing, self._refresh(batch))

    def _taken(self, actor: ShardActor) -> None:
        """A group taken (at this process's start, or from another process): its records' claims extended by
        the next passes, not at the next round (R5: a claim lasts while its record is remembered). Rounds
        come an hour apart from a process's start: where every process serving a group was gone within the
        hour (restarts, groups moved), a confirmed record's claim was never extended, expired a day after its
        Reserve, and a reuse of its id with lines of another group was decided there, a second record."""
        if actor.shard not in self._shards:
            self._shards.append(actor.shard)

    def stop(self) -> None:
        """The sweep's round trip under way given up (its claims last; the next start's sweep goes on),
        and any claim still unanswered failed (a Reserve waiting for it is answered UNAVAILABLE)."""
        for task in self._refreshing:
            cancel_for_good(task)
        self.claims.abandon()

    def _next_batch(self) -> list[tuple[str, int, int]]:
        """(id, home, ttl ms) of the records served now among the next ``REFRESH_PER_PASS`` looked at,
        in the sweep's order."""
        actors = self._engine.actors
        out: list[tuple[str, int, int]] = []
        budget = REFRESH_PER_PASS
        while budget > 0 and (self._ids or self._shards):
            budget -= 1  # a record skipped costs as one kept; an empty group a little too
            if not self._ids:
                self._shard = self._shards.popleft()
                self._ids.extend(actors[self._shard].ledger.reservations)  # ids only: read a slice a pass
                continue
            rid = self._ids.popleft()
            actor = actors[self._shard]
            rec = None if actor.vacant else actor.ledger.reservations.get(rid)
            if rec is not None and order_of(rid) is None:  # an order's part has its order's claim
                out.append((rid, self._shard, self._lasts_ms(rec, actor.clock.now_ms())))
        return out

    def _lasts_ms(self, rec: Reservation, now: int) -> int:
        """How long ``rec``'s claim must last from now: while it may be remembered, until the next
        round has extended it again, and the margin."""
        retention = self._engine.limits.retention_ms
        if rec.state == State.HELD:
            remembered = max(0, rec.expires_at - now) + retention
        elif rec.state == State.CONFIRMED:
            remembered = retention  # it may be resolved any moment: then remembered this long
        else:
            remembered = max(0, rec.updated_at + retention - now)
        return remembered + int(2 * self.refresh_every_s * 1000) + CLAIM_MARGIN_MS

    async def _refresh(self, batch: list[tuple[str, int, int]]) -> None:
        claims = [self.claims.claim(rid, home, ttl_ms) for rid, home, ttl_ms in batch]
        for (rid, home, _), held in zip(batch, await asyncio.gather(*claims, return_exceptions=True), strict=True):
            if isinstance(held, BaseException):
                log.debug("the claim of %r not extended (the next round tries again): %r", rid, held)
            elif held != home:  # made before claims were, or its claim lost and another made: told, kept
                log.warning("reservation %r has a record in group %d, but its id is claimed by group %d", rid, home,
                            held, extra={"event": "reservation_id_claimed_elsewhere", "reservation_id": rid,
                                         "group": home, "claimed_by": held})


def _pass_turn(before: asyncio.Future[None] | None, mine: asyncio.Future[None]) -> None:
    """``mine`` done once ``before`` is: at once when it is (or there is none), else when it ends —
    a batch that failed or whose caller left still passes the turn on, in order."""
    if before is None or before.done():
        if not mine.done():
            mine.set_result(None)
    else:
        before.add_done_callback(lambda _: None if mine.done() else mine.set_result(None))


async def claim_answer(claim: asyncio.Future[int]) -> int:
    """The group a claim holds; UNAVAILABLE (nothing decided) where Redis did not make it."""
    try:
        return await claim
    except STORAGE_ERRORS as exc:
        raise claim_refusal(exc) from None


def claim_refusal(exc: BaseException) -> Unavailable:
    """The refusal of a Reserve whose claim Redis did not make (``exc``): refused for memory (its
    write refused before it ran, as a log write is: ``refused_for_memory``), or not answered."""
    if out_of_memory(exc):
        return refused_for_memory("reservation_id: its claim")
    return Unavailable(f"reservation_id: its claim was not answered ({exc!r}); nothing was decided, retry",
                       Reason.STORAGE_UNREACHABLE)
