"""R2/R7/R8: a cross-shard change over the simulation's in-process log, its caller cancelled at every
await the coordination has. Each window once wedged shards or split memory from the log."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from reservation import Fact, FactKind, Ledger, Limits, Reservation, Unavailable, decode_entry, reserve_command
from reservation._errors import ResourceExhausted
from tests.atp_service.engine.helpers import SKUS, TwoShards, running, until_turns


class Rig(TwoShards):
    """Two shards on one Redis: a change spanning them goes through the coordinator."""

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



@pytest.fixture
async def rig() -> Any:
    async with running(Rig()) as started:
        yield started


async def test_cancelled_while_pausing_the_second_shard_leaves_the_first_running(rig: Rig) -> None:
    busy = rig.engine.actors[1].submit(lambda ledger, _now: ledger.set_safety_stock("A", "DC", 0))
    await until_turns(lambda: len(rig.log.pending) == 1, "shard 1 has an append in flight")
    order = asyncio.ensure_future(rig.order("r1"))
    await until_turns(lambda: rig.engine.actors[0]._mailbox.empty() and not rig.engine.actors[1]._mailbox.empty(),
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
    await until_turns(lambda: shard._mailbox.empty(), "the shard took the pause request")
    pausing.cancel()
    await asyncio.gather(pausing, return_exceptions=True)
    await rig.settled()


async def test_cancelled_while_a_paused_shard_waits_for_its_appends_does_not_end_the_shard(rig: Rig) -> None:
    """The shard answers the pause only after its appends in flight: the coordinator may be gone."""
    shard = rig.engine.actors[0]
    busy = shard.submit(lambda ledger, _now: ledger.set_safety_stock("D", "DC", 0))
    await until_turns(lambda: len(rig.log.pending) == 1, "an append in flight")
    pausing = asyncio.ensure_future(shard.pause())
    await until_turns(lambda: shard._mailbox.empty(), "the shard waits for its append before pausing")
    pausing.cancel()
    await asyncio.gather(pausing, return_exceptions=True)
    await rig.pump_until_done([busy])
    await rig.settled()


@pytest.mark.parametrize("outcome", ["lost", "doubt", "late", "ok"])
async def test_cancelled_while_the_group_append_is_in_flight_the_shards_see_it_through(
        rig: Rig, outcome: str) -> None:
    order = asyncio.ensure_future(rig.order("r1"))
    await until_turns(lambda: len(rig.log.pending) == 1, "the order's group is appended")
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
    await until_turns(lambda: len(rig.log.pending) == 1, "the order's group is appended")
    rig.log.pump("lost")
    with pytest.raises(Unavailable):
        await order
    await rig.settled()
    assert rig.engine.home_of("r1") is None  # no record, no route left behind


async def test_an_order_is_acknowledged_only_once_both_parts_are_durable(rig: Rig) -> None:
    order = asyncio.ensure_future(rig.order("r1"))
    await until_turns(lambda: len(rig.log.pending) == 1, "the order's group is appended")
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
    await until_turns(lambda: len(rig.log.pending) == 1, "the order's group is appended")
    rig.log.pump("late")
    with pytest.raises(Unavailable):
        await order
    for actor in rig.engine.actors:
        actor.request_maintenance()  # both shards settle, without a pump: the script is still on its way
    await until_turns(lambda: not any(actor.in_doubt for actor in rig.engine.actors), "the shards settle")
    again = asyncio.ensure_future(rig.order("r2", units=1))
    await rig.pump_until_done([again])  # the late script reaches Redis first, after the fence
    assert (rig.log.tally.late_landed, rig.log.tally.late_refused) == (0, 1)
    await rig.settled()
    assert rig.engine.actors[0].ledger.reservation("r1") is None
    assert rig.reserved() == [1, 1]


async def test_a_stop_while_the_shard_settles_applies_a_landed_entry_once(rig: Rig) -> None:
    """The actor loop and a graceful stop both settle a shard in doubt: one settle, once — a second,
    concurrent one replayed the landed entry again, and the final snapshot kept the double."""
    shard = rig.engine.actors[0]
    receipt = Fact("more", "wms", FactKind.RECEIPT, "D", "DC", 5, rig.clock.now_ms())
    more = shard.submit(lambda ledger, _now: ledger.record_fact(receipt))
    await until_turns(lambda: len(rig.log.pending) == 1, "the receipt is appended")
    rig.log.pump("doubt")  # it landed; the caller was told it failed
    with pytest.raises(Unavailable):
        await more
    rig.log.pause()  # Redis slow: the settle's fence waits
    shard.request_maintenance()  # the actor begins to settle ...
    await until_turns(lambda: shard._mailbox.empty(), "the actor took the maintenance request")
    stopping = asyncio.ensure_future(rig.engine.stop(snapshot=True))  # ... and so does the stop
    for _ in range(10):
        await asyncio.sleep(0)
    rig.log.resume()
    await stopping
    assert shard.ledger.quantities("D", "DC").on_hand == 15
    snap = await rig.log.load_snapshot(0)
    assert snap is not None
    restored = Ledger.restore(0, rig.config.limits, snap.ledger)
    async for _, data in rig.log.entries_after(0, snap.seq):
        restored.replay(decode_entry(data))
    assert restored.quantities("D", "DC").on_hand == 15


def _cmd(rid: str, *lines: tuple[str, int]) -> Any:
    return reserve_command(reservation_id=rid, order_ref="o", channel="web", ttl_seconds=60, allow_partial=False,
                           lines=[(sku, "DC", units) for sku, units in lines], limits=Limits())


async def test_a_stream_batch_leaves_a_route_for_every_record_and_for_nothing_else(rig: Rig) -> None:
    batch = [_cmd("span-ok", ("D", 1), ("A", 1)), _cmd("span-refused", ("D", 99), ("A", 1)), _cmd("single", ("A", 1))]
    many = asyncio.ensure_future(rig.engine.reserve_many(batch))
    await rig.pump_until_done([many])
    assert not rig.engine._routing
    assert set(rig.engine._home) == {rid for a in rig.engine.actors for rid in a.ledger.reservations}


async def test_a_cancelled_stream_batch_still_finds_the_records_its_shards_made(rig: Rig) -> None:
    """R8: the caller left while it waited on shard 1; shard 0 decides its part afterwards, and
    that record must keep its route (it was forgotten: HELD, yet NOT_FOUND for Get/Confirm/Release)."""
    resumes = [await actor.pause() for actor in rig.engine.actors]  # both shards busy for a moment
    many = asyncio.ensure_future(rig.engine.reserve_many([_cmd("on-1", ("A", 2)), _cmd("on-0", ("D", 1))]))
    for _ in range(10):
        await asyncio.sleep(0)
    many.cancel()  # while it waits on shard 1's answer (shard 1's part is then never decided)
    await asyncio.gather(many, return_exceptions=True)
    for resume in resumes:
        resume.set_result(None)
    await rig.pump_until_done([])
    await until_turns(lambda: not rig.engine._routing, "shard 0's answer heard")
    read = asyncio.ensure_future(rig.engine.get_reservation("on-0"))
    await rig.pump_until_done([read])
    assert read.result().reservation_id == "on-0"
    assert rig.engine.home_of("on-1") is None and not rig.engine._routing


async def test_a_reserve_whose_caller_left_and_whose_append_then_failed_leaves_no_route(rig: Rig) -> None:
    order = asyncio.ensure_future(rig.engine.reserve(_cmd("gone", ("D", 1))))
    await until_turns(lambda: len(rig.log.pending) == 1, "applied, its append in flight")
    order.cancel()
    await asyncio.gather(order, return_exceptions=True)
    assert rig.engine.home_of("gone") == 0  # the record is in memory: its route stays for now
    rig.log.pump("lost")
    await rig.pump_until_done([])
    assert rig.engine.home_of("gone") is None and not rig.engine._routing


async def test_a_shard_that_fails_while_a_coordinator_waits_for_room_releases_the_others() -> None:
    """The coordinator holds shard 0 and waits for room in shard 1's full mailbox; shard 1 fails,
    which empties its mailbox and so makes room: the pause put there is read by nobody. The
    coordinator must give up (UNAVAILABLE) and let shard 0 go, not wait for it forever."""
    rig = Rig()
    await rig.start()
    one = rig.engine.actors[1]
    held = asyncio.ensure_future(one.pause())  # park shard 1, then fill its mailbox
    await until_turns(held.done, "shard 1 paused")
    filler: list[Any] = []
    with pytest.raises(ResourceExhausted):
        while True:
            filler.append(one.submit(lambda ledger, _now: None))
    order = asyncio.ensure_future(rig.order("o1"))
    await until_turns(lambda: rig.engine.actors[0]._mailbox.empty() and not order.done(), "shard 0 granted")
    for _ in range(20):
        await asyncio.sleep(0)  # the coordinator now waits for room in shard 1's mailbox
    one.break_down(RuntimeError("a bug"))
    with pytest.raises(Unavailable):
        await asyncio.wait_for(order, 5)
    probe = rig.engine.actors[0].submit(lambda ledger, _now: None)  # shard 0 answers again
    for _ in range(100):
        await asyncio.sleep(0)
        rig.log.pump("ok")
    assert probe.done() and probe.exception() is None
    assert held.result().done()  # the failed shard's park ended with it
    assert all(isinstance(f.exception(), Unavailable) for f in filler)  # answered, not left to deadlines
