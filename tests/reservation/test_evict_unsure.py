"""Retention (R5) against changes not yet durable (R7), on the ledger alone: a record an order's saga
decides is stamped with the clock it read (``orders.decide``, ``settled``), then saved in a later turn,
whose entry carries that turn's time. Retention must keep it while that entry is open or in flight:
taken back, the entry's undo needs it, and the process's route to it must not be forgotten."""

from __future__ import annotations

import msgspec

from reservation import Ledger, Limits
from reservation import _operations as ops
from reservation._events import saved_since
from reservation._model import State
from tests.reservation.helpers import cmd, ledger_with

LIMITS = Limits(retention_ms=10)


def _decided_then_saved_late(stamped: int, turn: int) -> Ledger:
    """A hold, then its release decided at ``stamped`` (the saga's clock) and saved in a turn at ``turn``."""
    ledger = ledger_with({("A", "DC"): 5}, LIMITS)
    held, _ = ops.reserve(ledger, cmd("order", ("A", "DC", 2)), 1_000)
    ledger.commit(1_000)
    decided = msgspec.structs.replace(held, state=State.RELEASED, expires_at=0, updated_at=stamped)
    ledger.save(decided)  # the saga's ``_save``: the record as decided, in this turn's open batch
    return ledger


def test_a_record_saved_in_an_entry_in_flight_is_kept_whatever_its_stamp_R5_R7() -> None:
    ledger = _decided_then_saved_late(2_000, 2_050)
    entry, undo, _ = ledger.seal(2_050)
    unsure_from = saved_since(entry.events, entry.ts, None)  # as ``CommitPipeline.in_flight_since`` tells it
    assert unsure_from == 2_000
    assert ledger.evict(2_050, unsure_from=unsure_from) == []  # its entry in flight: may yet be taken back
    for step in reversed(undo):
        step()
    assert ledger.reservations["order"].state == State.HELD


def test_a_record_saved_in_the_open_batch_is_kept_whatever_its_stamp_R5_R7() -> None:
    ledger = _decided_then_saved_late(2_000, 2_050)
    assert ledger.evict(2_050) == []  # the housekeeping turn after the save, in the same batch
    ledger.commit(2_050)
    assert ledger.evict(2_050) == ["order"]  # durable: past its retention, forgotten
