"""Each owner's send fails on its own: an error, or an answer of the wrong length, leaves just that
owner's facts pending (refused as they were), the others take their owners' results; an owner that
failed is skipped until its wait has passed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from atp_service.edge.ratelog import OncePerKey
from atp_service.intake import owners
from atp_service.intake.facts import Result
from atp_service.intake.owners import OwnerSends
from reservation import DomainError, Fact, FactOutcome, Moved

APPLIED: Result = (FactOutcome.APPLIED, "")


def facts_for(*owner_names: str) -> tuple[list[Fact], list[Result | DomainError]]:
    facts = [Fact(f"e{n}", "pos", 1, f"sku-{n}", "DC", 1, 0) for n in range(len(owner_names))]
    return facts, [Moved(n, owner) for n, owner in enumerate(owner_names)]


async def test_one_owners_error_leaves_only_its_facts_pending() -> None:
    calls: list[str] = []

    async def send(owner: str, facts: Sequence[Fact]) -> list[Result | DomainError]:
        calls.append(owner)
        if owner == "broken":
            raise RuntimeError("not a gRPC error")
        if owner == "short":
            return []
        return [APPLIED] * len(facts)

    sends = OwnerSends(send)
    facts, results = facts_for("good", "broken", "short", "good")
    await sends.to_owners(facts, results, range(4))
    assert results[0] == results[3] == APPLIED
    assert isinstance(results[1], Moved) and isinstance(results[2], Moved), "left pending"
    assert sorted(calls) == ["broken", "good", "short"]
    calls.clear()
    facts, results = facts_for("good", "broken", "short")
    await sends.to_owners(facts, results, range(3))
    assert calls == ["good"], "the failed owners are skipped during their wait"
    assert sends.due("good") and not sends.due("broken")


async def test_a_failed_owner_is_tried_again_after_its_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(owners, "OWNER_RETRY", owners.BackoffPolicy(first_s=0.01, max_s=0.01))
    answers: list[bool] = [False, True]

    async def send(owner: str, facts: Sequence[Fact]) -> list[Result | DomainError]:
        if not answers.pop(0):
            raise ConnectionError("paused")
        return [APPLIED] * len(facts)

    sends = OwnerSends(send)
    facts, results = facts_for("x")
    await sends.to_owners(facts, results, [0])
    assert not sends.due("x")
    await asyncio.sleep(0.02)
    assert sends.due("x")
    await sends.to_owners(facts, results, [0])
    assert results == [APPLIED] and sends.due("x")


async def test_owners_that_failed_and_left_are_not_remembered_for_good() -> None:
    """Processes that left the keyspace failing (each rolling restart gives new addresses) are sent
    nothing again: the reader remembers at most ``MAX_FAILING_OWNERS`` (64) of them, the least
    recently failed forgotten first, while the one failing now is still skipped during its wait."""

    async def send(owner: str, facts: Sequence[Fact]) -> list[Result | DomainError]:
        raise ConnectionError(f"{owner} is gone")

    sends, bound = OwnerSends(send), 64
    for n in range(200):
        facts, results = facts_for(f"10.0.{n // 250}.{n % 250}:50051")
        await sends.to_owners(facts, results, [0])
        assert len(sends._failing) <= bound and len(sends._retry_at) <= bound
    assert not sends.due("10.0.0.199:50051"), "the owner failing now still waits"
    assert sends.due("10.0.0.0:50051"), "one long gone is tried at once if it is named again"


def test_a_refusal_is_told_once_per_interval_per_owner_with_the_owners_remembered_bounded() -> None:
    """The reader's 'owner refused the peer token' line (``edge.record.fact_sender``): once per
    interval for each owner, and the owners it remembers for that bounded as the failing ones are."""
    now = [0.0]
    told = OncePerKey(60.0, 8, clock=lambda: now[0])
    assert told.due("a") and not told.due("a"), "once per interval"
    now[0] = 60.0
    assert told.due("a"), "again once the interval has passed"
    for n in range(500):
        told.due(f"10.0.0.{n}:50051")
        assert len(told) <= 8
    assert not told.due("10.0.0.499:50051"), "the most recent are remembered"
    assert told.due("a"), "the least recently told was forgotten: told at once"


async def test_a_try_cancelled_before_it_began_leaves_its_owner_due_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one try of a failing owner is marked under way while it runs: a batch cancelled with that try
    not yet begun left the mark behind (cleared only by the try's own end), and the owner was skipped for
    good — its facts never sent again."""
    monkeypatch.setattr(owners, "OWNER_RETRY", owners.BackoffPolicy(first_s=0.01, max_s=0.01))
    sent: list[str] = []

    async def send(owner: str, facts: Sequence[Fact]) -> list[Result | DomainError]:
        sent.append(owner)
        if len(sent) == 1:
            raise ConnectionError("paused")
        return [APPLIED] * len(facts)

    sends = OwnerSends(send)
    facts, results = facts_for("o")
    await sends.to_owners(facts, results, [0])  # the owner fails: skipped for its wait
    await asyncio.sleep(0.02)
    assert sends.due("o")
    facts, results = facts_for("o")
    batch = asyncio.ensure_future(sends.to_owners(facts, results, [0]))
    await asyncio.sleep(0)  # the batch has started its try (in a task not yet begun)...
    batch.cancel()  # ...and is cancelled, as at the reader's stop
    with pytest.raises(asyncio.CancelledError):
        await batch
    assert sent == ["o"], "the try never began"
    assert sends.due("o"), "the owner is tried again"
    facts, results = facts_for("o")
    await sends.to_owners(facts, results, [0])
    assert results == [APPLIED] and sent == ["o", "o"]
