"""``--input-streams --fact-times`` (``inputfacts.Producer._ahead``): facts stamped about E7's allowed skew ahead,
judged by each reader's clock and by the owner's (``factjudge.judged_sent``)."""

from __future__ import annotations

import pytest

from tests.sim import inputscripts
from tests.sim.checks import Violation
from tests.sim.inputcluster import InputsClusterDriver
from tests.sim.inputdriver import InputsDriver
from tests.sim.tally import Tally

RACE_SEED = 79
"""``--input-streams --processes 3 --partition --suspends --new-addresses --fact-times``: a reader judged an entry
stamped just past the allowed skew (E7) and its dead letter's script was held back; meanwhile the entry was delivered
to another reader, which found it within the skew by then and applied it; the script landed after."""


async def test_input_entries_stamped_about_the_allowed_skew_ahead_are_applied_or_refused_once() -> None:
    """One process and a second consumer sending its facts to the owner, which judges E7 by its own clock: every entry
    whose fact has no other entry is applied, quarantined or dead-lettered as stamped in the future, exactly one
    (E6, E7, E8), on_hand the E1 fold of what was produced but the facts refused (E3)."""
    tally = Tally()
    await InputsDriver(3, tally, fact_times=True).run(60)
    assert tally.input_refused_ahead and tally.input_sent, tally


async def test_a_refusal_judged_before_its_entry_was_applied_elsewhere_is_neither_written_nor_acknowledged() -> None:
    """``RACE_SEED``: the dead letters' script finds the entry pending to its reader no more (``dead_letters._WRITE``),
    writes, acknowledges and keeps refused nothing of it; the fact applied once, no letter saying it was refused."""
    tally = Tally()
    await InputsClusterDriver(RACE_SEED, 3, tally, partition=True, suspends=True, new_addresses=True,
                              fact_times=True).run(60)
    assert tally.input_refusals_elsewhere and tally.input_refused_ahead, tally


async def test_the_simulation_finds_a_refusal_written_over_an_entry_applied_elsewhere(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's script without its fence (every entry taken for pending to the writer): ``RACE_SEED``'s refusal is
    written and its entry acknowledged after another reader applied its fact, and the end checks say so (E7, E8)."""
    monkeypatch.setattr(inputscripts, "_ours", lambda *_: True)
    with pytest.raises(Violation, match="applied, its dead letter saying it was refused as stamped in the future"):
        await InputsClusterDriver(RACE_SEED, 3, Tally(), partition=True, suspends=True, new_addresses=True,
                                  fact_times=True).run(60)
