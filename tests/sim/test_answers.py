"""The model of what each Reserve's caller was told (``answers.py``) finds what it is there to find."""

from __future__ import annotations

import pytest

from reservation import (
    Limits,
    LineRecord,
    Outcome,
    Reason,
    Reservation,
    ReserveCommand,
    ResourceExhausted,
    State,
    reserve_command,
)
from tests.sim.answers import Answers
from tests.sim.checks import Violation
from tests.sim.streams import Forwarded


def _cmd(rid: str = "r1") -> ReserveCommand:
    return reserve_command(reservation_id=rid, order_ref="o", channel="web", lines=[("A", "L1", 2)], ttl_seconds=10,
                           allow_partial=False, limits=Limits())


def _held(granted: int) -> tuple[Reservation, bool]:
    line = LineRecord("A", "L1", 2, granted, Outcome.GRANTED if granted else Outcome.INSUFFICIENT, 5, held=granted)
    state = State.HELD if granted else State.REJECTED
    return Reservation("r1", "o", "web", 10_000, False, state, (line,), 1_000, 11_000, 1_000), False


def test_a_retry_answered_another_decision_is_a_violation_R5() -> None:
    answers, cmd = Answers(), _cmd()
    answers.sent([cmd, cmd])
    answers.told([cmd], [_held(2)])
    answers.told([cmd], [_held(2)])  # a replay: the same
    with pytest.raises(Violation, match="R5: r1 decided twice"):
        answers.told([cmd], [Forwarded("r1", State.REJECTED, (int(State.REJECTED), 0, ()))])


def test_an_item_missing_from_a_batch_answer_is_a_violation_R8() -> None:
    answers = Answers()
    with pytest.raises(Violation, match="2 reservations answered 1 outcomes"):
        answers.told([_cmd("r1"), _cmd("r2")], [_held(2)])


def test_units_held_for_an_id_told_nothing_was_decided_are_a_violation() -> None:
    answers, cmd = Answers(), _cmd()
    answers.sent([cmd])
    answers.told([cmd], [ResourceExhausted("shed", Reason.SERVICE_OVERLOADED)])
    answers.check({})
    with pytest.raises(Violation, match="told nothing"):
        answers.check({"r1": _held(2)[0]})
