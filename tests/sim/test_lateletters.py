"""``--input-streams --late-letters`` (``inputletters.py``): the readers' dead letters' scripts and fence settings
landing late, after their callers gave up on them (``dead_letters._WRITE``, ``fence.Fence.raised``)."""

from __future__ import annotations

import pytest

from atp_service.intake.fence import Fence
from tests.sim import inputletters
from tests.sim.checks import Violation
from tests.sim.inputcluster import InputsClusterDriver
from tests.sim.inputdriver import InputsDriver
from tests.sim.tally import Tally

LATE_SEEDS = 3
"""Seeds of 60 steps each, one process and three: about a second each."""
UNFENCED_SEED = 33
"""``--input-streams --fact-times --late-letters``: a refusal (E7) whose dead letters' script's answer was lost lands
after its entry was delivered again to its reader, which judged it by a clock moved on and applied it."""


async def test_every_input_entry_is_applied_or_dead_lettered_once_whatever_its_late_letters_do() -> None:
    """Dead letters' scripts landing once their entries were read again (or a few calls later), fence settings
    landing over the tokens set since: every entry whose fact has no other entry applied, quarantined or dead-lettered
    as stamped in the future, exactly one — never both, never none (E6, E7, E8) — and every entry acknowledged at the
    end (a late setting fences its reader's writes until it sets its fence again: liveness)."""
    tally = Tally()
    for seed in range(LATE_SEEDS):
        one = InputsDriver(seed, tally, fact_times=True)
        inputletters.enabled(one.redis, seed)
        await one.run(60)
        three = InputsClusterDriver(seed, 3, tally, partition=True, suspends=True, new_addresses=True, fact_times=True)
        inputletters.enabled(three.redis, seed)
        await three.run(60)
    assert tally.input_letters_late and tally.input_fences_late and tally.input_refused_ahead, tally


async def test_the_simulation_finds_a_late_refusal_over_an_entry_applied_since_without_the_fence(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader's fence off (a write in doubt sets no new token: ``Fence.doubt`` a no-op): ``UNFENCED_SEED``'s late
    script writes its letter saying refused, acknowledges the entry and keeps it refused after the reader applied its
    fact — the defect of ``test_refused_letter_in_doubt`` — and the end checks say so (E7, E8)."""
    monkeypatch.setattr(Fence, "doubt", lambda self, entries: None)
    driver = InputsDriver(UNFENCED_SEED, Tally(), fact_times=True)
    inputletters.enabled(driver.redis, UNFENCED_SEED)
    with pytest.raises(Violation, match="applied, its dead letter saying it was refused as stamped in the future"):
        await driver.run(60)


async def test_a_late_letter_lands_nothing_with_the_fence() -> None:
    """``UNFENCED_SEED`` with the reader's fence: the late script carries a token set over since, and lands nothing."""
    tally = Tally()
    driver = InputsDriver(UNFENCED_SEED, tally, fact_times=True)
    inputletters.enabled(driver.redis, UNFENCED_SEED)
    await driver.run(60)
    assert tally.input_letters_late, tally
