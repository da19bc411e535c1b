"""R2/R7/R8: a cross-shard change over the simulation's in-process log, its caller cancelled at every
await the coordination has. Each window once wedged shards or split memory from the log."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from atp_service.clock import ManualClock
from atp_service.engine import Engine
from atp_service.shard import ShardActor
from reservation import Fact, FactKind, Ledger, Limits, Reservation, Unavailable, decode_entry, reserve_command

from ..sim.simlog import SimLog
from ..sim.world import sim_config

SKUS = ("D", "A")  # on shards 0 and 1 of two (checked below)


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(what)


class Rig:
    """Two shard actors and an engine over a SimLog; 10 units of each SKU at DC, durable."""

    def __init__(self) -> None:
        self.log = SimLog()
        self.clock = ManualClock(1_700_000_000_000)
        self.config = sim_config()
        actors = [ShardActor(s, Ledger(s, self.config.limits), self.log, self.clock, self.config, 0)  # type: ignore[arg-type]
                  for s in range(2)]
        self.engine = Engine(actors, self.log, self.clock, self.config)  # type: ignore[arg-type]
        assert [self.engine.place(sku) for sku in SKUS] == [0, 1]

    async def start(self) -> None:
        for actor in self.engine.actors:
            actor.start()
        stock = [self.engine.actors[s].submit(lambda ledger, now, sku=sku: ledger.record_fact(
                     Fact(f"stock-{sku}", "wms", FactKind.RECEIPT, sku, "DC", 10, now))) for s, sku in enumerate(SKUS)]
        await self.pump_until_done(stock)

    async def pump_until_done(self, futures: list[Any]) -> None:
        """Answer appends, and let shards in doubt settle (the maintenance timer's job in the service)."""
        for _ in range(100):
            await asyncio.sleep(0)
            self.log.pump("ok")
            for actor in self.engine.actors:
                if actor.in_doubt:
                    actor.request_maintenance()
            if all(f.done() for f in futures) and self.quiet():
                return
        raise AssertionError("never settled")

    def quiet(self) -> bool:
        return all(not a._inflight and not a._doubt and not a._held and a._mailbox.empty()
                   for a in self.engine.actors)

    def order(self, rid: str, units: int = 3) -> Any:
        cmd = reserve_command(reservation_id=rid, order_ref="o", channel="web", ttl_seconds=60,
                              lines=[(sku, "DC", units) for sku in SKUS], allow_partial=False, limits=Limits())
        return self.engine.reserve(cmd)

    def reserved(self) -> list[int]:
        pairs = zip(self.engine.actors, SKUS, strict=True)
        return [actor.ledger.quantities(sku, "DC").reserved for actor, sku in pairs]

    async def settled(self) -> None:
        """Both shards answer a new write (liveness), and memory equals a replay of the log (E10)."""
        await self.pump_until_done([])
        waits = [actor.submit(lambda ledger, _now: None) for actor in self.engine.actors]
        await self.pump_until_done(waits)
        for actor in self.engine.actors:
            assert actor.failure is None
            replayed = Ledger(actor.shard, self.config.limits)
            async for _, data in self.log.entries_after(actor.shard, 0):
                replayed.replay(decode_entry(data))
            assert sorted(replayed.store.items()) == sorted(actor.ledger.store.items()), f"shard {actor.shard}"
            assert replayed.reservations == actor.ledger.reservations, f"shard {actor.shard}"

    async def stop(self) -> None:
        await self.engine.stop(snapshot=False)


@pytest.fixture
async def rig() -> Any:
    r = Rig()
    await r.start()
    yield r
    await r.stop()


async def test_cancelled_while_pausing_the_second_shard_leaves_the_first_running(rig: Rig) -> None:
    busy = rig.engine.actors[1].submit(lambda ledger, _now: ledger.set_safety_stock("A", "DC", 0))
    await _until(lambda: len(rig.log.pending) == 1, "shard 1 has an append in flight")
    order = asyncio.ensure_future(rig.order("r1"))
    await _until(lambda: rig.engine.actors[0]._mailbox.empty() and not rig.engine.actors[1]._mailbox.empty(),
                 "shard 0 paused, shard 1 draining before it pauses")
    order.cancel()  # a client deadline
    await asyncio.gather(order, return_exceptions=True)
    await rig.pump_until_done([busy])
    await rig.settled()
    assert rig.engine.actors[0].ledger.reservation("r1") is None


async def test_cancelled_after_the_pause_was_granted_leaves_no_shard_parked(rig: Rig) -> None:
    """The window between 'pause granted' and the coordinator holding its resume future."""
    shard = rig.engine.actors[0]
    pausing = asyncio.ensure_future(shard.pause())
    await _until(lambda: shard._mailbox.empty(), "the shard took the pause request")
    pausing.cancel()
    await asyncio.gather(pausing, return_exceptions=True)
    await rig.settled()


async def test_cancelled_while_a_paused_shard_waits_for_its_appends_does_not_end_the_shard(rig: Rig) -> None:
    """The shard answers the pause only after its appends in flight: the coordinator may be gone."""
    shard = rig.engine.actors[0]
    busy = shard.submit(lambda ledger, _now: ledger.set_safety_stock("D", "DC", 0))
    await _until(lambda: len(rig.log.pending) == 1, "an append in flight")
    pausing = asyncio.ensure_future(shard.pause())
    await _until(lambda: shard._mailbox.empty(), "the shard waits for its append before pausing")
    pausing.cancel()
    await asyncio.gather(pausing, return_exceptions=True)
    await rig.pump_until_done([busy])
    await rig.settled()


@pytest.mark.parametrize("outcome", ["lost", "doubt", "late", "ok"])
async def test_cancelled_while_the_group_append_is_in_flight_the_shards_see_it_through(
        rig: Rig, outcome: str) -> None:
    order = asyncio.ensure_future(rig.order("r1"))
    await _until(lambda: len(rig.log.pending) == 1, "the order's group is appended")
    order.cancel()
    await asyncio.gather(order, return_exceptions=True)
    rig.log.pump(outcome)
    if outcome == "late":
        rig.log.arrive_late()  # after the caller's timeout, before the shards settle
    await rig.pump_until_done([])
    await rig.settled()
    held = [actor.ledger.reservation("r1") for actor in rig.engine.actors]
    landed = outcome in ("ok", "doubt", "late")
    assert (held[0] is not None) == landed and held[1] is None  # the record lives on its home shard
    assert rig.reserved() == ([3, 3] if landed else [0, 0])  # both lines or neither (R2)


async def test_an_order_whose_group_append_was_not_durable_is_answered_unavailable(rig: Rig) -> None:
    order = asyncio.ensure_future(rig.order("r1"))
    await _until(lambda: len(rig.log.pending) == 1, "the order's group is appended")
    rig.log.pump("lost")
    with pytest.raises(Unavailable):
        await order
    await rig.settled()
    assert rig.engine.home_of("r1") is None  # no record, no route left behind


async def test_an_order_is_acknowledged_only_once_both_parts_are_durable(rig: Rig) -> None:
    order = asyncio.ensure_future(rig.order("r1"))
    await _until(lambda: len(rig.log.pending) == 1, "the order's group is appended")
    for _ in range(5):
        await asyncio.sleep(0)
    assert not order.done()
    rig.log.pump("ok")
    rec, replayed = await order
    assert isinstance(rec, Reservation) and not replayed
    await rig.settled()


async def test_a_group_append_arriving_after_the_settle_is_refused_and_never_mistaken_for_another(
        rig: Rig) -> None:
    """R7: the settle fenced the shards before reading; the late script can no longer land, and
    the ids it carried are used again by the next entries without confusion."""
    order = asyncio.ensure_future(rig.order("r1"))
    await _until(lambda: len(rig.log.pending) == 1, "the order's group is appended")
    rig.log.pump("late")
    with pytest.raises(Unavailable):
        await order
    for actor in rig.engine.actors:
        actor.request_maintenance()  # both shards settle, without a pump: the script is still on its way
    await _until(lambda: not any(actor.in_doubt for actor in rig.engine.actors), "the shards settle")
    again = asyncio.ensure_future(rig.order("r2", units=1))
    await rig.pump_until_done([again])  # the late script reaches Redis first, after the fence
    assert (rig.log.late_landed, rig.log.late_refused) == (0, 1)
    await rig.settled()
    assert rig.engine.actors[0].ledger.reservation("r1") is None
    assert rig.reserved() == [1, 1]
