"""FactDesk.load_counts: a block split by shard; quarantined rows reach the quarantine stream and the
counters even when another shard of the same block refuses its part (E6: never dropped silently)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from atp_service.intake.facts import FactDesk
from reservation import CountRows, DomainError, FactOutcome, Ledger, Limits, ResourceExhausted, Unavailable

HOUR = 3_600_000
T0 = 1_790_000_000_000


class _Actor:
    def __init__(self, refuse: str = "") -> None:
        self.ledger = Ledger(0, Limits())
        self.ledger.stream_time = T0  # a row older than a day is late here
        self.refuse = refuse

    def submit(self, work: Callable[[Ledger, int], Any]) -> asyncio.Future[Any]:
        if self.refuse == "at once":
            raise ResourceExhausted("shard 1: mailbox full, retry with backoff")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.refuse == "later":
            fut.set_exception(Unavailable("shard 1: log storage unreachable, retry later"))
        else:
            fut.set_result(work(self.ledger, T0))
        return fut


class _Pipeline:
    def __init__(self, sent: list[dict[str, Any]]) -> None:
        self.sent, self.queued = sent, []  # type: ignore[var-annotated]

    async def __aenter__(self) -> _Pipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def xadd(self, stream: str, fields: dict[str, Any], **_: Any) -> None:
        self.queued.append(fields)

    async def execute(self) -> None:
        self.sent += self.queued


class _Redis:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def pipeline(self, transaction: bool = False) -> _Pipeline:
        return _Pipeline(self.sent)


class _Engine:
    def __init__(self, refuse: str) -> None:
        self.actors = [_Actor(), _Actor(refuse)]
        self.log_client = _Redis()

    def place(self, sku: str) -> int:
        return 0 if sku.startswith("A") else 1


@pytest.mark.parametrize("refuse", ["at once", "later"])
async def test_a_shard_that_refuses_its_part_leaves_the_others_quarantine_in_the_stream(refuse: str) -> None:
    engine = _Engine(refuse)
    desk = FactDesk(engine, "atp:quarantine", 1000)  # type: ignore[arg-type]
    # Shard 0 gets A1 (applied) and A2 (late: quarantined); shard 1 gets B1 and refuses.
    block = CountRows("erp", ["A1", "A2", "B1"], ["L1"], np.array([0, 1, 2], dtype=np.uint32),
                      np.zeros(3, dtype=np.uint32), np.array([5, 6, 7], dtype=np.int64),
                      np.array([T0, T0 - 30 * HOUR, T0], dtype=np.int64))
    with pytest.raises(DomainError):
        await desk.load_counts(block, "load")
    # Shard 0's part is durable (its log holds A2 as quarantined): the operator's copy must have it
    # too, and the counters must count what shard 0 decided — a caller that does not retry after
    # the refusal would otherwise leave a quarantined fact nowhere but in the shard log.
    assert [(f["sku"], f["reason"].split(":")[0]) for f in engine.log_client.sent] == [("A2", "late")]
    counted = {s.labels["outcome"]: s.value for m in desk.metrics.facts.collect() for s in m.samples
               if s.name.endswith("_total")}
    assert counted == {FactOutcome.APPLIED.name.lower(): 1, FactOutcome.QUARANTINED.name.lower(): 1, "unavailable": 1}


async def test_a_quarantine_stream_that_fails_refuses_the_call_and_counts_its_rows_unavailable() -> None:
    engine = _Engine("")

    async def broken() -> None:
        raise ConnectionError("redis gone")

    desk = FactDesk(engine, "atp:quarantine", 1000)  # type: ignore[arg-type]
    pipeline = engine.log_client.pipeline
    engine.log_client.pipeline = lambda transaction=False: _broken(pipeline(), broken)  # type: ignore[method-assign]
    block = CountRows("erp", ["A1", "A2"], ["L1"], np.array([0, 1], dtype=np.uint32), np.zeros(2, dtype=np.uint32),
                      np.array([5, 6], dtype=np.int64), np.array([T0, T0 - 30 * HOUR], dtype=np.int64))
    with pytest.raises(Unavailable, match="quarantine stream"):
        await desk.load_counts(block, "load")
    counted = {s.labels["outcome"]: s.value for m in desk.metrics.facts.collect() for s in m.samples
               if s.name.endswith("_total")}
    assert counted == {FactOutcome.APPLIED.name.lower(): 1, "unavailable": 1}


def _broken(pipe: _Pipeline, execute: Callable[[], Any]) -> _Pipeline:
    pipe.execute = execute  # type: ignore[method-assign]
    return pipe
