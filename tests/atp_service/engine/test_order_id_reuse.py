"""An order's id reserved again once its first order is no longer remembered (R5: a new attempt), on a Redis Cluster
(``engine.orders`` over the simulation's in-process log), while a part of the first order is still found under the
id: left at its group by an eviction that has not reached it yet, or its group back from data older than the second
order's part (R7). The first order's part is never taken for the second's: not its decision, its confirmation nor
its hold (R2, R3, Q3)."""

from __future__ import annotations

from typing import Any

import pytest

from reservation import State
from tests.atp_service.engine.helpers import running
from tests.atp_service.engine.test_order_sagas import RETENTION_MS, Rig


@pytest.fixture
async def rig() -> Any:
    async with running(Rig()) as started:
        yield started


async def forgotten_but_group_1(rig: Rig, rid: str, confirmed: bool) -> None:
    """Order ``rid`` (3 of each SKU) resolved — released, or confirmed and shipped (``confirmed``) — and past its
    retention forgotten at its home's group 0 (its record and its part there), while group 1's eviction has not come
    round yet: its part there still found, resolved."""
    engine = rig.engine
    await rig.run(engine.reserve(rig.cmd(rid)))
    if confirmed:
        await rig.run(engine.confirm(rid))
        await rig.run(engine.fulfill(rid, (), ""))
    else:
        await rig.run(engine.release(rid, (), ""))
    assert rig.quantities() == [(0, 0), (0, 0)]
    rig.clock.advance(RETENTION_MS + 1)
    home = engine.actors[0].ledger
    assert rid in home.evict(rig.clock.now_ms()) and home.reservation(rid) is None
    assert rig.part(rid, 1) is not None and rig.part(rid, 1).state in (State.FULFILLED, State.RELEASED)


@pytest.mark.parametrize("confirmed", [False, True], ids=["released", "fulfilled"])
async def test_an_id_reserved_again_with_the_same_content_never_takes_the_first_order_s_resolved_part_R5_R3(
        rig: Rig, confirmed: bool) -> None:
    """Defect (found by review): the part step replayed the first order's part, resolved past its retention and not
    yet evicted at its group, as the second order's own decision: released, the new Reserve was refused (its hold at
    group 0 given back); fulfilled, the new order was decided again CONFIRMED from it — its caller told CONFIRMED with
    nothing held at group 1 for it (shipped, those units oversold) and group 0's units committed unasked. A part
    resolved past its retention is what eviction forgets: reserved anew, as it is once evicted."""
    await forgotten_but_group_1(rig, "o", confirmed)
    again, replayed = await rig.run(rig.engine.reserve(rig.cmd("o")))
    assert (again.state, replayed) == (State.HELD, False), "the first order's resolved part taken for the second's"
    assert rig.quantities() == [(3, 0), (3, 0)]
    assert rig.part("o", 1).state == State.HELD
    assert (await rig.run(rig.engine.reserve(rig.cmd("o")))) == (again, True)  # a retry: a replay (R5)
