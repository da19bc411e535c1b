"""The sweep that keeps the reservation id claims of the records a leased process serves
(``engine/ids.py``, ``IdGuard.refresh_step``), against a real Redis: a housekeeping pass looks at a
bounded slice of records, whatever it skips (an order's parts have their order's claim; a record
forgotten since the round began has none to keep)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import redis.asyncio as aredis

from atp_service.engine import ids
from atp_service.engine.ids import IdGuard
from atp_service.storage.embedded_redis import EmbeddedRedis
from atp_service.storage.ids import IdClaims
from atp_service.storage.keys import Keyspace
from atp_service.storage.nodes import open_nodes
from reservation import Limits, LineRequest, Moved, Reason, ReserveCommand, State
from reservation._orders import PART_MARK
from tests.atp_service.redis_proxy import HoldingProxy
from tests.waiting import until

KEYS = Keyspace("sweep:")
NOW_MS = 1_700_000_000_000


def _engine(records: dict[str, Any]) -> Any:
    """A stand-in for a leased engine serving one group (0) that holds ``records``."""
    actor = SimpleNamespace(shard=0, vacant=False, ledger=SimpleNamespace(shard=0, reservations=records,
                                                                          live_reservations=len(records)),
                            clock=SimpleNamespace(now_ms=lambda: NOW_MS))
    return SimpleNamespace(actors=[actor], limits=Limits(retention_ms=60_000), reserve=None, orders=None, on_install=[])


async def test_a_sweep_pass_looks_at_a_bounded_slice_of_records_whatever_it_skips(redis_url: str) -> None:
    """A group holding many parts of orders homed elsewhere (every group but the lowest of an order's
    holds such parts) and one reservation of its own, last: a pass looked at records until it had
    ``REFRESH_PER_PASS`` claims to send, so it went through every part in one turn of the event loop
    (seconds for a few million: every shard, call and lease renewal of the process held behind it).
    Now each pass looks at ``REFRESH_PER_PASS`` records at most, kept or skipped; later passes go on."""
    held = SimpleNamespace(state=State.HELD, expires_at=NOW_MS + 60_000, updated_at=NOW_MS)
    parts = {f"o-{i}{PART_MARK}0": held for i in range(3 * ids.REFRESH_PER_PASS)}
    guard_engine = _engine({**parts, "r-own": held})
    nodes = open_nodes(redis_url, 5.0)
    r = aredis.Redis.from_url(redis_url)
    guard = IdGuard(guard_engine, IdClaims(nodes.run, KEYS))
    guard._next_round = 0.0  # a round due now
    try:
        passes = 0
        while not await r.exists(KEYS.reservation_id("r-own")):
            assert passes <= 3 * ids.REFRESH_PER_PASS, "the sweep never reached the group's own reservation"
            guard.refresh_step()
            passes += 1
            await asyncio.gather(*guard._refreshing)  # the pass's claims answered
        assert passes > 3, f"one pass looked at {len(parts) // passes} records or more"
        assert guard.claims.round_trips == 1, "one round trip, for the one record whose claim is kept here"
        assert not await r.exists(KEYS.reservation_id(f"o-0{PART_MARK}0")), "a part has its order's claim"
    finally:
        await r.aclose()
        await nodes.aclose()


def _reserve(rid: str) -> ReserveCommand:
    return ReserveCommand(rid, "", "web", (LineRequest("sku", "DC", 1),), 60_000, False)


async def test_batches_are_handed_on_in_the_order_they_came_whatever_their_claims_wait_for(
        redis_server: EmbeddedRedis) -> None:
    """A stream's batches, at a leased process: the first's new id waits for its claim, the second's
    id is known (nothing to claim). The second was handed to its shard first — decided ahead of the
    first, taking units the first was then refused for (seen as a stream's items decided out of order
    by their group's owner, ``test_processes_split``). Now each batch is handed on in turn."""
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    nodes = open_nodes(await proxy.start(), 30.0)
    engine = _engine({})
    engine.routes = SimpleNamespace(homes={"known": 0}, placement=lambda cmd: ({0}, 0))
    guard = IdGuard(engine, IdClaims(nodes.run, KEYS))
    handed: list[str] = []

    async def batch(rid: str) -> None:
        await guard.claimed([_reserve(rid)], [None])
        handed.append(rid)  # where the engine submits to the shard: synchronously after claimed returns

    try:
        assert await guard.claims.claim("warm", 0, 60_000) == 0  # the script loaded: claims are EVALSHA
        proxy.hold(b"EVALSHA")
        first = asyncio.create_task(batch("new"))
        await until(lambda: len(proxy.held) == 1, "the first batch's claim on its way")
        second = asyncio.create_task(batch("known"))
        for _ in range(10):  # turns enough for a batch with nothing to wait for
            await asyncio.sleep(0)
        assert handed == [], "a later batch handed on while an earlier one waited for its claim"
        proxy.hold()
        for held in list(proxy.held):
            await proxy.land(held)
        await asyncio.gather(first, second)
        assert handed == ["new", "known"]
    finally:
        await proxy.close()
        await nodes.aclose()


async def test_a_batch_whose_group_keeps_moving_is_claimed_a_bounded_number_of_times(redis_url: str) -> None:
    """Each look at the id finds it homed in another group (groups handed over again and again while its
    claims wait) and Redis answers each claim as asked (as where it lost the one before): the batch
    claimed again without end. Now it claims ``CLAIM_PASSES`` rounds and refuses the item ``GROUP_MOVED``
    naming its last home with no owner yet (the caller retries), nothing decided; an item that settled
    in the meantime goes on."""
    homes = iter(range(1_000))
    engine = _engine({})
    empty = SimpleNamespace(reservations={}, live_reservations=0)
    engine.actors = [SimpleNamespace(shard=g, vacant=False, ledger=empty) for g in range(1_000)]
    engine.routes = SimpleNamespace(homes={}, placement=lambda cmd: ({0}, next(homes) if cmd.reservation_id == "m"
                                                                     else 7))
    nodes = open_nodes(redis_url, 5.0)
    guard = IdGuard(engine, IdClaims(nodes.run, KEYS))
    lost = aredis.Redis.from_url(redis_url)
    claim = guard.claims.claim

    async def after_loss(rid: str, home: int, ttl_ms: int) -> int:
        await lost.delete(KEYS.reservation_id(rid))  # the claim before lost: this one made afresh
        return await claim(rid, home, ttl_ms)

    guard.claims.claim = after_loss  # type: ignore[method-assign]
    try:
        out: list[Any] = [None, None]
        items = await guard.claimed([_reserve("m"), _reserve("s")], out)
        assert [i for i, _ in items] == [1], out
        assert isinstance(out[0], Moved) and out[0].reason == Reason.GROUP_MOVED and out[0].owner == "", out[0]
        assert next(homes) <= 2 * ids.CLAIM_PASSES, "claimed more rounds than the bound"
    finally:
        await lost.aclose()
        await nodes.aclose()


async def test_groups_taken_again_and_again_never_hold_off_the_round_over_the_others_R5(redis_url: str) -> None:
    """A group taken has its records' claims extended at once (``_taken``), queued in the sweep's own queue; a
    round began only once that queue was empty. Where groups were taken faster than their sweeps ended (a
    process in a crash loop, its groups moved to this one and back, a group of millions of records taking
    minutes to sweep), the queue never emptied and no round came again: the claims of the records in the
    groups this process kept serving were extended no more, a confirmed record's claim expired, and a reuse
    of its id with lines of another group was decided there, a second record. Now a round begins when due
    whatever is queued, each group queued once."""
    confirmed = SimpleNamespace(state=State.CONFIRMED, expires_at=0, updated_at=NOW_MS)
    held = SimpleNamespace(state=State.HELD, expires_at=NOW_MS + 60_000, updated_at=NOW_MS)
    engine = _engine({"stable": confirmed})  # group 0: served all along
    moving = SimpleNamespace(shard=1, vacant=False, clock=engine.actors[0].clock,
                             ledger=SimpleNamespace(shard=1, reservations={f"busy-{i}": held for i in range(
                                 3 * ids.REFRESH_PER_PASS)}))
    engine.actors.append(moving)
    nodes = open_nodes(redis_url, 5.0)
    r = aredis.Redis.from_url(redis_url)
    guard = IdGuard(engine, IdClaims(nodes.run, KEYS))
    try:
        for hook in engine.on_install:
            hook(moving)  # group 1 taken
        guard._next_round = 0.0  # a round due now: over group 0 too
        passes = 0
        while not await r.exists(KEYS.reservation_id("stable")):
            assert passes < 40, "no round over the group served all along while group 1 was taken again and again"
            if passes % 2:
                for hook in engine.on_install:
                    hook(moving)  # group 1 lost and taken again before its sweep (4 passes) ended
            guard.refresh_step()
            passes += 1
            await asyncio.gather(*guard._refreshing)
    finally:
        await r.aclose()
        await nodes.aclose()
