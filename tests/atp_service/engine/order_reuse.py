"""What the tests of an order id reserved again share: order ``o`` confirmed, fulfilled and forgotten past its
retention, then reserved again (``reserved_again``), and group 1 back from data older than the second order's part,
the first order's CONFIRMED part there in its place (``group_1_back``)."""

from __future__ import annotations

from typing import Any

from reservation import Reservation
from tests.atp_service.engine.test_order_sagas import RETENTION_MS, Rig


async def reserved_again(rig: Rig, confirm_second: bool) -> tuple[Reservation, Reservation]:
    """Order ``o`` (3 of each SKU) confirmed and fulfilled, forgotten past its retention; reserved again with 1 of group
    1's SKU (``confirm_second``: confirmed). The first order's part at group 1 as it was confirmed, and the second's."""
    engine = rig.engine
    await rig.run(engine.reserve(rig.cmd("o")))
    await rig.run(engine.confirm("o"))
    first = rig.part("o", 1)
    await rig.run(engine.fulfill("o", (), ""))
    rig.clock.advance(RETENTION_MS + 1)
    for actor in engine.actors:
        actor.ledger.evict(rig.clock.now_ms())
    await rig.run(engine.reserve(rig.cmd("o", (3, 1))))
    if confirm_second:
        await rig.run(engine.confirm("o"))
    return first, rig.part("o", 1)


async def group_1_back(rig: Rig, first: Reservation, second: Reservation) -> None:
    """Group 1 back from data older than ``second`` (R7): ``first`` in its place, its units held and committed as
    ``first`` had them."""
    def back(ledger: Any, _now: int) -> None:
        for line, old in zip(second.lines, first.lines, strict=True):
            ledger.move_hold(line.sku, line.location, old.held - line.held, old.committed - line.committed)
        ledger.save(first)

    await rig.run(rig.engine.actors[1].submit(back))
