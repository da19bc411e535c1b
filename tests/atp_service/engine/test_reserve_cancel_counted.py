"""A unary Reserve whose caller goes in the very loop turn its hold's append lands - the caller's cancellation
cancels the reply its task awaits at once, but the task sees it only at its next step, and the append's answer,
already in line, delivers its batch first (a deadline passing as Redis answers after a slow spell: both woken by
one poll) - is counted as it was decided, once: the answer its batch dropped for the reply cancelled is the one its
caller would have had. Over a SimLog whose appends land only when the test answers them."""

from __future__ import annotations

import asyncio

from atp_service.engine.pipeline import CommitPipeline
from atp_service.metrics import EngineMetrics
from reservation import Ledger, Limits, reserve_command
from tests.atp_service.engine.helpers import SKUS, TwoShards, until_turns


def _cmd(rid: str) -> object:
    return reserve_command(reservation_id=rid, order_ref="o", channel="web", ttl_seconds=60,
                           lines=[(SKUS[0], "DC", 3)], allow_partial=False, limits=Limits())


async def test_a_reserve_whose_caller_goes_as_its_append_lands_is_counted_once() -> None:
    """Defect: the count of a caller gone was found by looking for its reply in the batches in flight
    (``answer_kept``) when its task saw the cancellation; a batch delivered between the cancellation and that step
    had dropped the reply's answer already (a reply cancelled is skipped), so the hold, durable, was counted
    nowhere."""
    rig = TwoShards()
    await rig.start()
    engine = rig.engine
    home = engine.actors[engine.place(SKUS[0])]
    reserving = asyncio.ensure_future(engine.reserve(_cmd("r1")))  # type: ignore[arg-type]
    await until_turns(lambda: bool(home._inflight) and home.ledger.reservation("r1") is not None,
                      "the hold decided, its entry on its way")
    reserving.cancel()  # its reply cancelled now; the task's own step comes after what is in line already
    rig.log.pump("ok")  # the append's answer, in line first: the batch delivered, the cancelled reply skipped
    assert not home._inflight
    (gone,) = await asyncio.gather(reserving, return_exceptions=True)
    assert isinstance(gone, asyncio.CancelledError), gone
    await until_turns(lambda: engine.metrics.reservations_of("held").value == 1, "the durable hold counted")
    await rig.run(engine.reserve(_cmd("r1")))  # type: ignore[arg-type]  # the caller's retry: from the record
    assert (engine.metrics.reservations_of("held").value, engine.metrics.reservations_of("replayed").value) == (1, 1)
    await rig.stop()


async def test_a_reserve_whose_caller_goes_before_its_turn_is_counted_nowhere() -> None:
    """The other side: a caller gone while its message waited for its turn decided nothing (skipped in its turn,
    R8), and nothing is counted, whatever is delivered meanwhile."""
    rig = TwoShards()
    await rig.start()
    engine = rig.engine
    home = engine.actors[engine.place(SKUS[0])]
    first = asyncio.ensure_future(engine.reserve(_cmd("r1")))  # type: ignore[arg-type]
    await until_turns(lambda: bool(home._inflight), "the first hold's entry on its way")
    second = asyncio.ensure_future(engine.reserve(_cmd("r2")))  # type: ignore[arg-type]
    await until_turns(lambda: not home._mailbox.empty(), "the second waiting behind it")
    second.cancel()
    rig.log.pump("ok")
    await asyncio.gather(second, return_exceptions=True)
    await rig.pump_until_done([first])
    assert home.ledger.reservation("r2") is None
    assert engine.metrics.reservations_of("held").value == 1  # the first's, by its caller
    await rig.stop()


async def test_each_answer_kept_for_a_caller_gone_lasts_till_its_callers_step() -> None:
    """Defect: the answers kept for replies cancelled were all cleared by one call_soon, queued with the first kept
    in the turn; a second reply cancelled after that (its caller's step queued behind the clear) and answered in the
    same turn (two batches' appends answered together) had its answer cleared before its caller asked: its hold,
    durable, counted nowhere. Each answer is kept till the step after its own caller's."""
    pipeline = CommitPipeline(0, Ledger(0, Limits()), None, 0, EngineMetrics())  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    x: asyncio.Future[str] = loop.create_future()
    y: asyncio.Future[str] = loop.create_future()
    kept: dict[str, asyncio.Future[str] | None] = {}

    async def caller(name: str, reply: asyncio.Future[str]) -> None:
        try:
            await reply
        except asyncio.CancelledError:  # as ``Router.reserve`` does
            kept[name] = pipeline.answer_kept(reply)
            raise

    callers = [loop.create_task(caller("x", x)), loop.create_task(caller("y", y))]
    await asyncio.sleep(0)  # both await their replies

    def one_turn() -> None:  # x's caller goes, x's batch answered; then y's caller goes, y's batch answered
        callers[0].cancel()
        pipeline._deliver(x, "x", None)
        callers[1].cancel()
        pipeline._deliver(y, "y", None)

    loop.call_soon(one_turn)
    await asyncio.gather(*callers, return_exceptions=True)
    assert kept["x"] is not None and kept["x"].result() == "x"
    assert kept["y"] is not None, "y's answer cleared before its caller asked"
    assert kept["y"].result() == "y"
    assert not pipeline._dropped  # nothing kept past the turn
