"""benchmarks/process_soak.py's seed and its check, against one real service (the soak itself needs a Redis
Cluster and several processes: ``make soak``).

The soak's stock never arrived: its RECEIPTs carried no ``event_time`` and were each refused INVALID, unread,
so every Reserve of every run was refused and the check compared nothing with nothing (0 held everywhere). And
at a million units a SKU no run could have sold its stock out: ``available < 0`` could not fail."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from atp_client import AtpClient
from atp_client.pb.atp.v1 import atp_pb2 as pb
from benchmarks.process_soak import LOC, SKUS, Load, check, seed
from tests.atp_service.edge.test_forward import silent_peer
from tests.conftest import ServiceFactory

__all__ = ["silent_peer"]  # the fixture, used here by name


async def test_the_soak_s_stock_is_seeded_and_its_reserves_held(start_service: ServiceFactory) -> None:
    service, client = await start_service()
    await seed(f"127.0.0.1:{service.port}", dict.fromkeys(SKUS, 5))
    positions = await client.availability([(sku, LOC) for sku in SKUS])
    assert [p.on_hand for p in positions] == [5] * len(SKUS)
    assert (await client.reserve("r1", [(SKUS[0], LOC, 5)])).state == pb.RESERVATION_STATE_HELD


async def test_the_check_finds_acknowledged_holds_beyond_the_stock_the_soak_seeded_R2(
        start_service: ServiceFactory) -> None:
    """The service holding more than the soak gave it (a receipt taken twice, E8) sold units that never were:
    its own counters agree with each other (reserved 4 <= on_hand 5), the soak's book does not (4 > 3)."""
    service, client = await start_service()
    address = f"127.0.0.1:{service.port}"
    stock = dict.fromkeys(SKUS, 5)
    await seed(address, stock)
    load = Load(None, [address])  # type: ignore[arg-type]  # no caller runs: its book is filled here
    load.tried["r1"] = [(SKUS[0], LOC, 4)]
    load.acked["r1"] = (await client.reserve("r1", load.tried["r1"])).state
    violations, found = await check(load, [address], stock)
    assert violations == [] and found == {"reservations_found": 1}
    violations, _ = await check(load, [address], {**stock, SKUS[0]: 3})  # the soak seeded 3
    assert violations == [f"{SKUS[0]} oversold: acknowledged reservations hold 4 units of the 3 seeded; on_hand 5"]


class _Deadline(random.Random):
    """The soak's callers' draws, but the deadline: ``timeout_s`` every time."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(1)
        self.timeout_s = timeout_s

    def choice(self, seq: Any) -> Any:
        return self.timeout_s if all(isinstance(x, float) for x in seq) else super().choice(seq)


async def test_the_refusals_of_calls_given_a_short_deadline_are_tallied_apart(
        silent_peer: tuple[str, asyncio.Event]) -> None:
    """A quarter of the soak's calls are given 5 ms on purpose (and a quarter 50 ms): their DEADLINE_EXCEEDED were
    tallied with those of the calls given 2 s, so a real wait (a group answering nowhere for 2 s) hid among the
    load generator's own. ``refusals`` has the calls with a normal deadline; ``refusals_short_deadline`` the others."""
    address, _ = silent_peer  # a process that never answers
    for timeout_s, short in ((0.005, True), (0.3, False)):  # 0.3 s: a normal deadline, as 2 s, kept short here
        load = Load(_Deadline(timeout_s), [address])
        async with AtpClient(address) as client:
            await load._one(client, "r1")
        refused = {"DEADLINE_EXCEEDED": 1}
        assert load.errors == ({} if short else refused), timeout_s  # was: the 5 ms call's refusal there too
        assert load.errors_short == (refused if short else {}), timeout_s
