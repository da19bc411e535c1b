"""The watch of owed quarantine writes (``inputowed.OwedWatch``), its own logic: which failed writes it watches, and
what it takes for their facts decided again while their writers live (E8)."""

from __future__ import annotations

from typing import Any

import pytest

from atp_service.intake.quarantine import _FIELDS
from reservation import Fact, FactKind
from tests.sim.checks import Violation
from tests.sim.inputchecks import named
from tests.sim.inputdriver import InputsDriver
from tests.sim.tally import Tally

ENTRY = ("in-a", b"5-0")
FACT = Fact("e-1", "wms", FactKind.ADJUST, "sku-1", "loc-1", 3, 1_700_000_000_000, "")
WRITER = "atp-1"


def _failed_write(driver: InputsDriver) -> None:
    """``quarantine._ONCE``'s KEYS and ARGV for ``FACT``'s write by ``WRITER`` (KEYS[1]: its entry's stream), told
    refused: MAXLEN, group, consumer, run, then per fact its digest, KEYS index, entry id, fields' names and values."""
    args: list[Any] = [1000, "atp", WRITER, "1", "digest", 1, ENTRY[1], *["f", "v"] * _FIELDS]
    driver.owed.failed(driver.redis, [ENTRY[0], "written", "run", "ahead", "drawn"], args)


def _decided_again(given: set[str]) -> InputsDriver:
    """A driver (not run) whose Redis gave ``ENTRY`` to ``given``; ``WRITER``'s quarantine write of it failed, then
    its fact was applied (the log's history read: nothing there)."""
    driver = InputsDriver(0, Tally())
    driver.producer.facts[ENTRY] = FACT
    driver.redis.given[ENTRY] = set(given)
    _failed_write(driver)
    driver._applied.add(named(FACT))
    return driver


def test_an_owed_entry_whose_fact_is_applied_while_its_writer_lives_is_a_finding() -> None:
    """Only its writer was given the entry: the fact applied while the write is owed is decided twice (E8)."""
    driver = _decided_again({WRITER})
    assert ENTRY in driver.owed.lost
    with pytest.raises(Violation, match=f"E8: entry {ENTRY[0]} 5-0 .* quarantine write by {WRITER} failed"):
        driver.owed.applied(driver)


def test_an_entry_another_consumer_was_given_before_its_quarantine_write_failed_is_not_watched() -> None:
    """Another consumer was given the entry before the write failed (a batch of it in flight at a process stopped,
    its group deleted and made again meanwhile): that process may still decide the fact from memory, which is its to
    decide, as a claimer's is — not the owed writer deciding it again (``OwedWatch.failed``)."""
    driver = _decided_again({WRITER, "atp-2"})
    assert ENTRY not in driver.owed.lost
    driver.owed.applied(driver)
