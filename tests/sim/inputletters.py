"""``--late-letters``: a reader's dead-letter script (``dead_letters._WRITE``) and its fence's ``SET``
(``fence.Fence.raised``) landing late, after their caller gave up on them.

A call held in the network, a proxy, a retransmission reaches Redis after its caller's timeout: the caller took it
for in doubt and went on. Such a call answers nothing (its caller is told the answer was lost) and lands later: a
dead letters' script soon after one of its entries is delivered again to its reader (``AFTER_READ_AGAIN``) or just
before Redis takes that entry's next acknowledgement (``AT_ACK_P``: past the reader's check of what landed before its
fence), else some Redis calls later (``LATE_CALLS``), as a fence's ``SET`` does; every one lands before the end checks
(the drain waits for them). The script judges the entries as Redis holds them then,
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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
reader (drawn), at the latest: once that read, before the reader's acknowledgement."""
AT_ACK_P = 0.5
"""Of the late scripts whose entry was delivered again, those that land at the entry's next acknowledgement, just
before Redis takes it (``test_refused_letter_in_doubt``): past the reader's fence check (``Fence.landed``)."""


@dataclass
class Late:
    """A call held in the network."""

    left: int  # Redis calls until it lands, at the latest
    what: str  # "dead letter" | "fence"
    land: Callable[[], Any]
    entries: frozenset[tuple[str, bytes]]  # the input entries it names
    at_ack: bool = False  # lands at an acknowledgement of one of ``entries``, if that comes first


class LateLetters:
    """The late calls in flight, each landing after its count of Redis calls; what was injected."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng  # None: none late (``--late-letters`` not given)
        self.late: list[Late] = []
        self.counts: Counter[str] = Counter()

    def held(self, what: str, land: Callable[[], Any], active: bool,
             entries: frozenset[tuple[str, bytes]] = frozenset()) -> bool:
        """Whether this call is held in the network (its caller told the answer was lost); it lands later."""
        if self.rng is None or not active or self.rng.random() >= LATE_P:
            return False
        self.late.append(Late(self.rng.randint(*LATE_CALLS), what, land, entries))
        self.counts[f"{what} late"] += 1
        return True

    def calls(self, events: list[str]) -> None:
        """A call reaches Redis: the late ones due land first, in the order they were sent."""
        for one in self.late:
            one.left -= 1
        self._land([one for one in self.late if one.left <= 0], events)

    def acking(self, stream: str, ids: Iterable[bytes], events: list[str]) -> None:
        """An ``XACK`` of ``ids`` reaches Redis: the late scripts naming one of them that wait for it land first."""
        named = {(stream, entry_id) for entry_id in ids}
        self._land([one for one in self.late if one.at_ack and one.entries & named], events)

    def _land(self, due: list[Late], events: list[str]) -> None:
        """``due`` land, out of the calls in flight first: a script acknowledging its entries lands once."""
        self.late = [one for one in self.late if one not in due]
        for one in due:
            one.land()
            self.counts[f"{one.what} landed late"] += 1
            events.append(f"a late {one.what} landed")

    def read_again(self, stream: str, entry_id: bytes) -> None:
        """An entry delivered again to its reader: a late script naming it lands soon (``AFTER_READ_AGAIN``), or at
        its acknowledgement (``AT_ACK_P``)."""
        if self.rng is None:
            return
        for one in self.late:
            if (stream, entry_id) not in one.entries or one.at_ack:
                continue
            if self.rng.random() < AT_ACK_P:
                one.at_ack = True  # at its ``LATE_CALLS`` at the latest: the entry may never be acknowledged
            else:
                one.left = min(one.left, self.rng.randint(*AFTER_READ_AGAIN))

    def restarted(self) -> None:
        """Redis back from older data: the calls in flight died with its connections."""
        self.late.clear()

    def tallied(self, tally: Tally) -> None:
        tally.input_letters_late += self.counts["dead letter landed late"]
        tally.input_fences_late += self.counts["fence landed late"]


def enabled(redis: SimStreams, seed: int) -> None:
    """``--late-letters`` for a driver's Redis (``SimStreams``)."""
    redis.letters.rng = random.Random(f"letters {seed}")
