"""What each Reserve's caller was told, against what the service holds (R5, R7, R8): a model kept outside it.

- Every item of a ReserveStream is answered once, its own (or the stream ends with a status, the items not
  answered by then told it): never an answer missing, one too many, or another id's.
- A reservation id is decided once (R5): every answer to a Reserve of it with the same content (a retry, at any
  process, a batch sent again) says what its first answer said — the decision, each line's grant and allocations,
  when the hold expires — until Redis loses what it held (``forget``).
- An id whose every attempt was answered a refusal that says nothing was decided (its group another's, the
  service or a shard shedding load, Redis refusing the write, a bound reached) holds no units (its caller, told
  so, reserves again under a new id: the stock would be held twice).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from reservation import GIVEN_UP, DomainError, Reason, ReserveCommand
from reservation import _orders as orders
from tests.sim.checks import Violation
from tests.sim.streams import Decision, Forwarded, decided_of

NOTHING_DECIDED = frozenset({Reason.GROUP_MOVED, Reason.SERVICE_OVERLOADED, Reason.SHARD_OVERLOADED,
                             Reason.STORAGE_UNREACHABLE, Reason.CAPACITY_REACHED})
"""Refusals whose words (docs/API.md) say this try applied nothing."""


class Answers:
    def __init__(self) -> None:
        self.decided: dict[str, tuple[ReserveCommand, Decision]] = {}
        self.unanswered: Counter[str] = Counter()  # attempts sent, not (yet) told nothing was decided
        self.maybe: set[str] = set()  # ids an attempt of which may have decided (answered so, or never)
        self.nothing: dict[str, str] = {}  # ids told nothing was decided: why
        self.checked = 0

    def sent(self, cmds: Sequence[ReserveCommand]) -> None:
        for cmd in cmds:
            self.unanswered[cmd.reservation_id] += 1

    def told(self, cmds: Sequence[ReserveCommand], results: Sequence[Any]) -> None:
        if len(results) != len(cmds):
            raise Violation(f"R8: {len(cmds)} reservations answered {len(results)} outcomes")
        for cmd, result in zip(cmds, results, strict=True):
            rid = cmd.reservation_id
            self.unanswered[rid] -= 1
            if isinstance(result, DomainError):
                if result.reason in NOTHING_DECIDED and result.metadata.get(GIVEN_UP) != "true":
                    self.nothing.setdefault(rid, f"{result.reason.name}: {result}")
                else:
                    self.maybe.add(rid)
                continue
            self.maybe.add(rid)
            decision = result.decision if isinstance(result, Forwarded) else decided_of(result)
            answered = result.reservation_id if isinstance(result, Forwarded) else result[0].reservation_id
            if answered != rid:
                raise Violation(f"R8: the answer to {rid} names {answered}")
            first = self.decided.setdefault(rid, (cmd, decision))
            if first[0] == cmd and first[1] != decision:
                raise Violation(f"R5: {rid} decided twice: first answered {first[1]}, then {decision}")

    def forget(self) -> None:
        """Redis lost entries: a Reserve it lost may be decided anew."""
        self.decided.clear()

    def check(self, records: dict[str, Any]) -> None:
        """No units held for an id whose every attempt was told nothing was decided (``records``: every shard's)."""
        held: Counter[str] = Counter()
        for rid, rec in records.items():
            held[orders.order_of(rid) or rid] += sum(line.held + line.committed for line in rec.lines)
        for rid, why in self.nothing.items():
            if rid in self.maybe or self.unanswered[rid] > 0:
                continue
            self.checked += 1
            if held[rid]:
                raise Violation(f"R8: {rid} holds {held[rid]} units, though every attempt of it was told nothing "
                                f"was decided ({why})")
