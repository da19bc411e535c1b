"""Each owner's send fails on its own: an error, or an answer of the wrong length, leaves just that
owner's facts pending (refused as they were), the others take their owners' results; an owner that
failed is skipped until its wait has passed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

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
