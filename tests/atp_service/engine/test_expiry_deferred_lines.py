"""An expiry the housekeeper cannot make durable now (an order's part at a process not answering, Redis
refusing writes) is tried again at the next pass, every ``maintenance_interval_ms`` (100 ms): its line is
rate-limited, not written once per order or per change per pass. Pure logic: the housekeeper with a
stand-in engine and coordinator, and a fake clock for its lines."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import cast

import pytest

from atp_service.engine.coordinator import Coordinator
from atp_service.engine.maintenance import Housekeeper
from atp_service.engine.router import Engine
from atp_service.logs import EveryInterval
from reservation import Ledger, Limits, Reason, Reservation, State, Unavailable
from reservation._events import ReservationSaved

DUE = 1_000
PEER_DOWN = Unavailable("outcome unknown: a group's log did not answer", Reason.OUTCOME_UNKNOWN)


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "atp_service.engine.maintenance" and r.levelno >= logging.WARNING]


async def test_orders_whose_expiry_fails_are_said_once_a_while_not_once_each_per_pass(
        caplog: pytest.LogCaptureFixture) -> None:
    """1,000 orders due while a part's process does not answer: a WARNING for every order at every pass
    (each requeued and taken again 100 ms later), thousands of lines a second for as long as the peer is
    away. Now one line per interval, the next saying in ``left_out`` how many were left out; every order
    is still requeued (R3: the next pass tries again)."""
    ledger = Ledger(0, Limits())
    ids = [f"order-{i}" for i in range(1_000)]
    for rid in ids:
        ledger.emit(ReservationSaved(Reservation(rid, "", "", 60_000, False, State.HELD, (), 0, DUE, 0, parts=(0, 1))))
    ledger.commit(0)

    async def expire(order_id: str, shard: int) -> None:
        raise PEER_DOWN

    engine = SimpleNamespace(actors=[SimpleNamespace(ledger=ledger)], orders=SimpleNamespace(expire=expire))
    housekeeper = Housekeeper(cast(Engine, engine), cast(Coordinator, None), interval_s=3600)
    now = [0.0]
    housekeeper._deferred_lines = EveryInterval(housekeeper._deferred_lines.interval_s, lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="atp_service.engine.maintenance"):
        for rid in ids:
            housekeeper._orders_due[(0, rid)] = (ledger, DUE)
        while housekeeper._orders_due or housekeeper._background:
            housekeeper._start_order_expiries()
            await asyncio.wait(list(housekeeper._background))
        assert len(_lines(caplog)) == 1
        assert sorted(ledger.due(DUE, 10_000)) == sorted(ids)  # every one requeued, tried again at the next pass
        now[0] += housekeeper._deferred_lines.interval_s
        housekeeper._orders_due[(0, ids[0])] = (ledger, DUE)
        housekeeper._start_order_expiries()
        await asyncio.wait(list(housekeeper._background))
    said = _lines(caplog)
    assert len(said) == 2
    assert (said[1].event, said[1].left_out) == ("expiry_deferred", 999)  # type: ignore[attr-defined]


async def test_changes_expiring_holds_across_shards_that_fail_are_said_once_a_while(
        caplog: pytest.LogCaptureFixture) -> None:
    """A coordinated expiry refused (Redis refusing writes): a WARNING per change per pass before."""
    ledger = Ledger(0, Limits())
    holds = [*(f"hold-{n}" for n in range(200)), "hold-last"]
    for rid in holds:
        ledger.emit(ReservationSaved(Reservation(rid, "", "", 60_000, False, State.HELD, (), 0, DUE, 0)))
    ledger.commit(0)
    ledger.due(DUE, 10_000)  # taken, as a pass takes them

    async def run(*args: object) -> None:
        raise PEER_DOWN

    housekeeper = Housekeeper(cast(Engine, SimpleNamespace(actors=[])), cast(Coordinator, SimpleNamespace(run=run)),
                              interval_s=3600)
    now = [0.0]
    housekeeper._deferred_lines = EveryInterval(housekeeper._deferred_lines.interval_s, lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="atp_service.engine.maintenance"):
        for rid in holds[:-1]:
            await housekeeper._expire_across([0, 1], ledger, [(rid, DUE)])
        assert len(_lines(caplog)) == 1
        now[0] += housekeeper._deferred_lines.interval_s
        await housekeeper._expire_across([0, 1], ledger, [("hold-last", DUE)])
    said = _lines(caplog)
    assert len(said) == 2
    assert said[1].left_out == 199  # type: ignore[attr-defined]
    assert sorted(ledger.due(DUE, 10_000)) == sorted(holds)  # each requeued (R3)
