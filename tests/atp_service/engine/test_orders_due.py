"""Orders due past ``EXPIRE_ORDERS_AT_ONCE`` wait in the housekeeper, oldest first (R3). Those that
are no longer the hold that fell due, or whose group is no longer served here, are dropped as the
queue is taken from its front — thousands at once after a group is handed over, in O(1) each
(``Housekeeper._orders_due``), and the live orders behind them still start, in their order."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import cast

import pytest

from atp_service.engine import maintenance
from atp_service.engine.coordinator import Coordinator
from atp_service.engine.maintenance import Housekeeper
from atp_service.engine.router import Engine
from reservation import Ledger, Limits, Reservation, State
from reservation._events import ReservationSaved

DUE = 1_000


def _orders(ledger: Ledger, prefix: str, n: int) -> list[str]:
    """``n`` HELD orders (records whose parts span groups) of ``ledger``, due at ``DUE``."""
    ids = [f"{prefix}{i}" for i in range(n)]
    for rid in ids:
        ledger.emit(ReservationSaved(Reservation(rid, "", "", 60_000, False, State.HELD, (), 0, DUE, 0, parts=(0, 1))))
    ledger.commit(0)
    return ids


async def test_stale_orders_are_dropped_and_the_live_behind_them_start_oldest_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maintenance, "EXPIRE_ORDERS_AT_ONCE", 3)
    handed_over, served = Ledger(0, Limits()), Ledger(1, Limits())
    started: list[str] = []
    gate = asyncio.Event()

    async def expire(order_id: str, shard: int) -> None:
        started.append(order_id)
        await gate.wait()

    engine = SimpleNamespace(actors=[SimpleNamespace(ledger=Ledger(0, Limits())), SimpleNamespace(ledger=served)],
                             orders=SimpleNamespace(expire=expire))
    housekeeper = Housekeeper(cast(Engine, engine), cast(Coordinator, None), interval_s=3600)
    stale = _orders(handed_over, "gone", 2_000)  # its group now served by a new ledger (handed over, retaken)
    live = _orders(served, "o", 5)
    released = live.pop(1)
    served.reservations[released] = Reservation(released, "", "", 60_000, False, State.RELEASED, (), 0, DUE, 0,
                                                parts=(0, 1))
    for ledger, ids in ((handed_over, stale), (served, [*live[:1], released, *live[1:]])):
        for rid in ids:
            housekeeper._orders_due[(ledger.shard, rid)] = (ledger, DUE)
    housekeeper._start_order_expiries()
    await asyncio.sleep(0)
    assert started == live[:3]  # at most EXPIRE_ORDERS_AT_ONCE, oldest first; the stale and released ones dropped
    assert list(housekeeper._orders_due) == [(1, rid) for rid in live[3:]]
    gate.set()
    await asyncio.wait(list(housekeeper._background))  # the sagas started end
    assert housekeeper._orders_expiring == 0
    housekeeper._start_order_expiries()
    await asyncio.sleep(0)
    assert started == live and not housekeeper._orders_due
