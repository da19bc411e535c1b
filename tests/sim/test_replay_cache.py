"""The checks' replays of the log kept from one step to the next (``replaycache.py``) and the history's facts read
once (``historyfacts.py``) answer as fresh ones do: here every answer of theirs is compared with a fresh one
(``replaycache.CHECK``, ``SIM_CACHE_CHECK=1`` on the command line), through logs trimmed by snapshots, crashes,
restarts and tails Redis lost (a history cut back: read again), with one process and three."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from reservation import Fact, FactKind, Ledger, Limits, LogEntry
from reservation._events import FactApplied
from tests.sim import replaycache
from tests.sim.cluster import ClusterWorld
from tests.sim.driver import Driver
from tests.sim.replaycache import differs


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(replaycache, "CHECK", True)
    yield


async def test_kept_replays_and_the_facts_read_once_answer_as_fresh_ones_whatever_redis_lost(checked: None) -> None:
    driver = Driver(0, lose_tail=True)
    await driver.run(60)
    served, world = driver.world._replays.served, driver.world
    assert served["same"] and served["carried"] and served["fresh"] > world.recoveries, served
    assert world.history_facts.read_again, "no history cut back: the seed no longer reads one again"


async def test_kept_replays_answer_as_fresh_ones_with_three_processes(checked: None) -> None:
    driver = Driver(1, processes=3, lose_tail=True)
    await driver.run(30)
    assert isinstance(driver.world, ClusterWorld)
    served = driver.world._replays.served
    assert served["same"] and served["carried"], served


def test_a_kept_replay_that_a_check_changed_is_told_from_a_fresh_one() -> None:
    """``differs`` compares every attribute (but ``Segments.find``'s one-position cache, which a read sets:
    each side's checked to answer as a search does)."""
    def ledger() -> Ledger:  # as a replay makes it
        made = Ledger(0, Limits())
        for n, sku in enumerate(("a", "b", "c")):
            fact = Fact(f"e{n}", "pos", FactKind.RECEIPT, sku, "L1", 5 + n, 1_000 + n)
            made.replay(LogEntry(2_000 + n, [FactApplied(fact)]))
        return made

    kept, fresh = ledger(), ledger()
    assert differs(kept, fresh, "ledger") is None
    assert kept.store.locate("a", "L1") is not None  # a check's read
    assert differs(kept, fresh, "ledger") is None
    kept.memory._next_forget_at += 1
    assert differs(kept, fresh, "ledger") == (f"ledger.memory._next_forget_at: {kept.memory._next_forget_at} / "
                                              f"{fresh.memory._next_forget_at}")
    kept.memory._next_forget_at -= 1
    kept.store._seg._hit_slot += 1  # a look-up cache naming another slot
    assert "find cache" in (differs(kept, fresh, "ledger") or "")
