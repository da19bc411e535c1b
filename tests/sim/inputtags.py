"""``--input-streams --tag-faults``: the reader's tag (``bounds._TAG``: its token set beside each input stream, the
group's last delivered entry and oldest pending one read) as a fault point like Redis's other calls, drawn from its own
random stream (``TagFaults``: the other faults' draws as they were). Without the flag a tag is answered at once, no
fault drawn: the seeds' runs as they were (those the tests pin among them).

While a step runs a tag is refused before Redis ran it (no token set), or its answer lost after it ran (in doubt:
Redis holds the token, the reader keeps no bound under it), or lost before it ran and landing late — after a few more
calls to Redis by any reader, perhaps after its process was stopped past its lease, killed and started again under a
new token, or its group deleted and made again by another reader (``land``). A reader cancelled while its tag is in
flight (a stop, a kill) leaves it landing late or not at all. Now and then a consumer's token is lost alone, its
stream kept (evicted, or past its time to live: ``lose_token``). A Redis back from older data (``inputtail``) takes
back the tokens with the streams (one Redis, one slot), and the tags in flight die with its connections.

What must hold (``inputchecks``, as ever): a group made again, whatever token Redis holds, never starts past an entry
not yet applied, quarantined or dead-lettered (E6, R7), and every fact is applied at most once (E8).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tests.sim import inputscripts
from tests.sim.inputpipeline import _fail

if TYPE_CHECKING:
    from tests.sim.inputstreams import SimStreams
    from tests.sim.tally import Tally

TAG_FAULT_P = 0.3
"""The chance that a tag fails while faults are on: a third refused, a third in doubt, a third landing late."""
LATE_CALLS = (1, 40)
"""A late tag lands after this many more calls to Redis (any reader's, any kind), fewest and most."""
TOKEN_LOST_P = 0.004
"""Per call to Redis while faults are on, the chance that one consumer's token beside one stream is lost alone."""


class TagFaults:
    """The tag's faults (seeded), the late ones in flight, and what was injected."""

    def __init__(self, rng: random.Random | None) -> None:
        self.rng = rng  # None: no faults (``--tag-faults`` not given)
        self.late: list[list[Any]] = []  # [calls left, keys, args]: tags in flight, landing late
        self.counts: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def call(self, redis: SimStreams) -> Callable[[list[str], list[Any]], Any]:
        """The tag script as ``register_script`` gives it."""

        async def at_once(keys: list[str], args: list[Any]) -> Any:
            return inputscripts.tag(redis, keys, args)

        async def tag(keys: list[str], args: list[Any]) -> Any:
            assert self.rng is not None
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:  # sent, its caller gone: it lands late, or never reached Redis
                if self.rng.random() < 0.5:
                    self._in_flight(keys, args)
                raise
            self.calls(redis)
            kind = "ok" if not redis.faults.active or self.rng.random() >= TAG_FAULT_P else \
                self.rng.choice(["refused", "lost", "late"])
            self._count(f"tag {kind}")
            if kind != "ok":
                redis.faults.events.append(f"tag {kind}")
            if kind in ("ok", "lost"):
                out = inputscripts.tag(redis, keys, args)
                if kind == "ok":
                    return out
            elif kind == "late":
                self._in_flight(keys, args)
            raise _fail("refused" if kind == "refused" else "lost")

        return tag if self.rng is not None else at_once

    def made(self, make: Callable[[list[str], list[Any]], Any]) -> Callable[[list[str], list[Any]], Any]:
        """``unread._MAKE`` (``make``), counted: a group made at the bound of the token Redis holds, or not."""

        def run(keys: list[str], args: list[Any]) -> Any:
            out = make(keys, args)
            if out[0] == 1:
                self._count("made at a bound" if str(out[2]) != str(args[1]) else "made at the start")
            return out

        return run

    def _in_flight(self, keys: list[str], args: list[Any]) -> None:
        assert self.rng is not None
        self.late.append([self.rng.randint(*LATE_CALLS), list(keys), list(args)])

    def calls(self, redis: SimStreams) -> None:
        """A call reaches Redis: the late tags due land first; while faults are on, a token may be lost alone."""
        if self.rng is None:
            return
        due = [one for one in self.late if one[0] <= 1]
        self.late = [[left - 1, keys, args] for left, keys, args in self.late if left > 1]
        for _, keys, args in due:
            inputscripts.tag(redis, keys, args)
            self._count("tag landed late")
            redis.faults.events.append("a late tag landed")
        if redis.faults.active and redis.tokens and self.rng.random() < TOKEN_LOST_P:
            gone = self.rng.choice(sorted(redis.tokens))
            del redis.tokens[gone]
            self._count("token lost")
            redis.faults.events.append(f"token {gone} lost")

    def restarted(self) -> None:
        """Redis back from older data: the tags in flight died with its connections."""
        self.late.clear()

    def tallied(self, tally: Tally) -> None:
        tally.input_tags += self.counts.get("tag ok", 0) + sum(
            self.counts.get(f"tag {kind}", 0) for kind in ("refused", "lost", "late"))
        tally.input_tags_failed += sum(self.counts.get(f"tag {kind}", 0) for kind in ("refused", "lost", "late"))
        tally.input_tags_late += self.counts.get("tag landed late", 0)
        tally.input_tokens_lost += self.counts.get("token lost", 0)
        tally.input_made_at_bound += self.counts.get("made at a bound", 0)
