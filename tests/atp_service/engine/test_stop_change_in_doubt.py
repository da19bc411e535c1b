"""A change (Confirm, Release, Fulfil) decided in its shard's turn whose log entry is still on its way when the
engine stops — its shard's drain past its bound (2 x redis_timeout_s), the entry left for the next start to settle
from the log — is in doubt (R7): its caller is told ``OUTCOME_UNKNOWN``, the change not known to be durable, never
``SHUTTING_DOWN``, which says it was refused before anything was done. Over a SimLog whose appends land only when
the test answers them: this one is never answered."""

from __future__ import annotations

import asyncio
import dataclasses

from reservation import Limits, Reason, State, Unavailable, reserve_command
from tests.atp_service.engine.helpers import SKUS, TwoShards, until_turns


async def test_a_change_decided_but_not_durable_when_the_engine_stops_is_told_in_doubt() -> None:
    rig = TwoShards()
    for actor in rig.engine.actors:  # a drain's bound the test waits out: 2 x 0.05 s
        actor._settings = dataclasses.replace(actor._settings, redis_timeout_s=0.05)
    await rig.start()
    engine = rig.engine
    await rig.run(engine.reserve(reserve_command(reservation_id="r1", order_ref="o", channel="web", ttl_seconds=60,
                                                 lines=[(SKUS[0], "DC", 3)], allow_partial=False, limits=Limits())))
    home = engine.actors[engine.place(SKUS[0])]
    confirming = asyncio.ensure_future(engine.confirm("r1"))
    await until_turns(lambda: home.ledger.reservation("r1").state == State.CONFIRMED and bool(home._inflight),  # type: ignore[union-attr]
                      "the confirmation decided, its entry on its way")
    await engine.stop(snapshot=False)
    (answer,) = await asyncio.gather(confirming, return_exceptions=True)
    assert isinstance(answer, Unavailable) and answer.reason == Reason.OUTCOME_UNKNOWN, answer
