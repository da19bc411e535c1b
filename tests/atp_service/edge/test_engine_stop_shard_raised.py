"""``Engine.stop`` whose shard's stop raises (a bug in one part of the stop): every other step of the engine's stop
still runs — the changes still waiting are answered and none is left pending past it, the other shards' final
snapshots are written — and the failure is raised once they have."""

from __future__ import annotations

import asyncio

import pytest

from atp_service import ManualClock
from reservation import Reason, State, Unavailable
from tests.atp_service.edge.test_api import T0, stocked
from tests.atp_service.edge.test_reservation_counts import changes_in_flight
from tests.conftest import ServiceFactory
from tests.waiting import until


async def test_a_shard_whose_stop_raises_leaves_the_changes_answered_and_the_others_snapshotted(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect: ``Engine.stop`` raised the first shard's stop failure as soon as every shard had stopped, skipping
    every shard's final snapshot (the next start replays every log whole) and ``stopped_changes``, the stop's own
    end of the changes still running (here their shards' stops answer them: they must be, either way)."""
    service, client = await stocked(start_service, ManualClock(T0), mailbox_size=1, redis_timeout_s=0.5)
    engine = service.engine
    assert engine is not None and engine.place("A") != engine.place("D") != engine.place("B")
    await client.reserve("x1", [("A", "S1", 1), ("D", "DC", 1)])
    lowest = engine.actors[min(engine.place("A"), engine.place("D"))]
    broken = engine.actors[engine.place("B")]
    stop = broken.stop

    async def stop_then_raise(*args: object) -> None:
        await stop(*args)  # type: ignore[arg-type]
        raise RuntimeError("a bug in a shard's stop")

    monkeypatch.setattr(broken, "stop", stop_then_raise)
    await lowest.pause()  # held: the shard's stop gives it up (after its drain's bound)
    callers = [asyncio.ensure_future(engine.confirm("x1")) for _ in range(5)]
    await until(lambda: len(changes_in_flight()) == 5 and len(lowest._mailbox) == 1, "the changes waiting", 20)
    with pytest.raises(RuntimeError, match="a bug in a shard's stop"):
        await engine.stop(snapshot=True)
    assert not changes_in_flight()  # each ended by the stop, not left running past it
    answers = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(answer, Unavailable) and answer.reason == Reason.SHUTTING_DOWN for answer in answers), answers
    snapshotted = {actor.shard: actor._checkpoints._seq == actor.seq for actor in engine.actors if actor.seq}
    assert snapshotted == {shard: shard != broken.shard for shard in snapshotted}  # the others' final snapshots
    home = engine.home_of("x1")
    assert home is not None and engine.actors[home].ledger.reservation("x1").state == State.HELD  # type: ignore[union-attr]
