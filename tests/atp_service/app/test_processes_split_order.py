"""A ``ReserveStream`` split by owner decides its items in the order they came at every owner, as one
process does: an item of a later batch sent to another process's group never takes units an earlier
batch's item there is then refused for — whatever this process's own shards wait for meanwhile
(``edge/servicer.py _reserve_batch``: a batch's items owned elsewhere go out in the batch's turn)."""

from __future__ import annotations

import asyncio

from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.app.test_processes import group_of, start_process
from tests.atp_service.app.test_processes_split import item, reserved, stocked_pair
from tests.conftest import ServiceFactory
from tests.waiting import until

__all__ = ["start_process"]  # the fixture, used here by name


async def test_a_later_batch_s_item_owned_elsewhere_waits_for_no_shard_here_and_takes_nothing_an_earlier_one_was_owed(
        start_process: ServiceFactory) -> None:
    running, here, there = await stocked_pair(start_process)  # 10 units of each, ``there`` at the other process
    (service, client), (owner, _) = running
    assert service.engine is not None and owner.engine is not None
    resume = await service.engine.actors[group_of(here)].pause()  # this process's shard busy a while
    batches = [[item("o-1", here, 1), item("o-2", there, 10)],  # all of ``there``: decided first, held
               [item("o-3", there, 1)]]  # later: refused, nothing left
    answering = asyncio.ensure_future(_answers(client.reserve_stream(batches)))
    try:
        # Both batches are at the owner once the later one's item is decided there (its decision, held or
        # refused, is what is asserted below); the earlier batch still waits for the shard here.
        await until(lambda: owner.engine is not None and owner.engine.home_of("o-3") is not None
                    and "o-3" in owner.engine.actors[group_of(there)].ledger.reservations, "o-3 decided there", 30)
        assert not answering.done()
    finally:
        resume.set_result(None)
    answers = await answering
    states = {o.reservation_id: o.response.state for answer in answers for o in answer.outcomes}
    assert states == {"o-1": pb.RESERVATION_STATE_HELD, "o-2": pb.RESERVATION_STATE_HELD,
                      "o-3": pb.RESERVATION_STATE_REJECTED}, answers
    assert await reserved(running, there) == 10


async def _answers(stream: object) -> list[pb.ReserveStreamResponse]:
    return [answer async for answer in stream]  # type: ignore[attr-defined]
