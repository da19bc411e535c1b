"""``--late-letters``: a reader's dead-letter script (``dead_letters._WRITE``) and its fence's ``SET``
(``fence.Fence.raised``) landing late, after their caller gave up on them.

A call held in the network, a proxy, a retransmission reaches Redis after its caller's timeout: the caller took it
for in doubt and went on. Such a call answers nothing (its caller is told the answer was lost) and lands later: a
dead letters' script soon after one of its entries is delivered again to its reader (``AFTER_READ_AGAIN``), else some
Redis calls later (``LATE_CALLS``), as a fence's ``SET`` does. The script judges the entries as Redis holds them then,
with the fence's token it carried; the ``SET`` puts back the token it carried, over any set since. So a dead letter
can land after its reader read the entry again and judged it by a clock moved on (applied:
``test_refused_letter_in_doubt``), and a late ``SET`` fences the reader's own writes until it raises its fence again
(``Fence.refused``). The end checks hold every entry to one outcome: applied, quarantined or dead-lettered, never
two, never none (``inputchecks``).
Seeded on its own (``letters {seed}``): a seed without the flag goes as it did.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tests.sim.tally import Tally

if TYPE_CHECKING:
    from tests.sim.inputstreams import SimStreams

LATE_P = 0.2
"""Of the dead letters' scripts and fence settings sent while faults are on, those that land late."""
LATE_CALLS = (1, 120)
"""How many Redis calls later a late call lands at the latest (drawn)."""
AFTER_READ_AGAIN = (1, 3)
"""A late dead letters' script lands this many Redis calls after one of its entries was delivered again to its
reader (drawn): once that read, before the reader's acknowledgement (``test_refused_letter_in_doubt``)."""


class LateLetters:
    """The late calls in flight, each landing after its count of Redis calls; what was injected."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng  # None: none late (``--late-letters`` not given)
        self.late: list[tuple[int, str, Callable[[], Any], frozenset[tuple[str, bytes]]]] = []
        """(calls left, what, landing, the input entries it names)."""
        self.counts: Counter[str] = Counter()

    def held(self, what: str, land: Callable[[], Any], active: bool,
             entries: frozenset[tuple[str, bytes]] = frozenset()) -> bool:
        """Whether this call is held in the network (its caller told the answer was lost); it lands later."""
        if self.rng is None or not active or self.rng.random() >= LATE_P:
            return False
        self.late.append((self.rng.randint(*LATE_CALLS), what, land, entries))
        self.counts[f"{what} late"] += 1
        return True

    def calls(self, events: list[str]) -> None:
        """A call reaches Redis: the late ones due land first, in the order they were sent."""
        due = [one for one in self.late if one[0] <= 1]
        self.late = [(left - 1, what, land, entries) for left, what, land, entries in self.late if left > 1]
        for _, what, land, _ in due:
            land()
            self.counts[f"{what} landed late"] += 1
            events.append(f"a late {what} landed")

    def read_again(self, stream: str, entry_id: bytes) -> None:
        """An entry delivered again to its reader: a late script naming it lands soon (``AFTER_READ_AGAIN``)."""
        if self.rng is None:
            return
        self.late = [(min(left, self.rng.randint(*AFTER_READ_AGAIN)) if (stream, entry_id) in entries else left,
                      what, land, entries) for left, what, land, entries in self.late]

    def restarted(self) -> None:
        """Redis back from older data: the calls in flight died with its connections."""
        self.late.clear()

    def tallied(self, tally: Tally) -> None:
        tally.input_letters_late += self.counts["dead letter landed late"]
        tally.input_fences_late += self.counts["fence landed late"]


def enabled(redis: SimStreams, seed: int) -> None:
    """``--late-letters`` for a driver's Redis (``SimStreams``)."""
    redis.letters.rng = random.Random(f"letters {seed}")
