"""``--input-streams``: the producer — facts appended to two input streams, some entries malformed, the streams
trimmed by the producer's ``MAXLEN``.

Facts come out of event-time order, with E1 ties, exact duplicates (a new entry, one fact: a producer's resend) and
conflicts (an identity with another payload, E8). An entry now and then cannot be read as a fact (a quantity that is
no number, a kind no one knows, a field missing or named twice): dead-lettered with its reason, never applied. In a
third of the seeds the producer caps a stream (``XADD … MAXLEN n``, n 4 to 10) and sometimes writes a burst of
entries at once, so that entries are trimmed before any consumer read them (counted by the read that crosses the
gap, ``unread.GroupReader``) and while pending (dead-lettered ``TRIMMED_WHILE_PENDING``: by the read of the pending
list, ``[id, nil]``, or by the claim that finds them).

With ``--fact-times`` some new facts are stamped about E7's allowed skew ahead of the world's clock (``_ahead``, its
own random stream: seeds without the flag replay as before), just inside it or just outside: a reader judges E7 by
its process's clock (``inputclocks``), so one may refuse a fact (dead-lettered, ``_field`` ``event_time_ms``) that
another applies — its clock ahead (``--clock-skew``), or reading it later (a claim past ``claim_idle_ms``, a group
made again, the world's clock moved on). The end checks hold each such entry to one outcome (``inputchecks``).
"""

from __future__ import annotations

import random

from reservation import Fact, FactKind
from tests.sim.inputreaders import CLAIM_IDLE_MS
from tests.sim.inputstreams import SimStreams
from tests.sim.skew import SKEW_BOUND_MS
from tests.sim.world import World

STREAMS = ("sim:in:pos", "sim:in:wms")
SKUS, LOCATIONS, SOURCES = ("A", "B", "J", "C"), ("L1", "L2", "L3"), ("pos", "wms")
KINDS = (FactKind.SALE, FactKind.RETURN, FactKind.RECEIPT, FactKind.ADJUST, FactKind.COUNT)
MALFORMED_P, BURST_P = 0.05, 0.1
AHEAD_P = 0.15
"""``--fact-times``: the chance that a new fact is stamped about the allowed skew ahead (``Producer._ahead``)."""
NAMES = ("event_id", "source", "kind", "sku", "location", "quantity", "event_time_ms")


class Producer:
    def __init__(self, rng: random.Random, world: World, redis: SimStreams,
                 ahead: random.Random | None = None) -> None:
        """``ahead``: ``--fact-times``, the draws of the facts stamped about the allowed skew ahead (None: none)."""
        self.rng, self.world, self.redis, self.ahead = rng, world, redis, ahead
        self.facts: dict[tuple[str, bytes], Fact] = {}  # input entry (stream, id) -> its fact
        self.malformed: set[tuple[str, bytes]] = set()  # entries that are no fact
        self.read_lost: dict[tuple[str, bytes], Fact] = {}
        """Entries Redis lost (``inputtail``, out of ``facts``) that a consumer was given before: a reader holding one
        may decide its fact after the loss, as another entry of that fact (a resend) is decided."""
        self.produced: list[Fact] = []
        self.last: dict[str, tuple[int, int]] = {}  # per stream, its last id's (ms, seq)
        capped = rng.random() < 1 / 3
        self.maxlen = {stream: rng.randint(4, 10) if capped else None for stream in STREAMS}

    def produce(self, step: int, trace: list[str]) -> None:
        rng = self.rng
        n = rng.choice((0, 1, 1, 2, 3))
        if any(self.maxlen.values()) and rng.random() < BURST_P:
            n += rng.randint(5, 15)  # faster than the readers take them: some trimmed unread
        for _ in range(n):
            stream = rng.choice(STREAMS)
            now = self.world.clock.now_ms()
            ms, seq = self.last.get(stream, (0, 0))
            ms, seq = (now, 0) if now > ms else (ms, seq + 1)
            self.last[stream] = ms, seq
            entry_id = b"%d-%d" % (ms, seq)
            if rng.random() < MALFORMED_P:
                flat, what = self._malformed()
                self.malformed.add((stream, entry_id))
            else:
                fact = self._fact()
                self.facts[(stream, entry_id)] = fact
                flat, what = _flat(fact), (f"{fact.source}/{fact.event_id} {FactKind(fact.kind).name} {fact.sku}@"
                                           f"{fact.location} {fact.quantity} t{fact.event_time - now}")
            self.redis.xadd(stream, entry_id, flat, self.maxlen[stream])
            trace.append(f"{step}: XADD {stream} {entry_id.decode()} {what}")

    def _malformed(self) -> tuple[list[bytes], str]:
        rng = self.rng
        fact = Fact(f"m{rng.randint(0, 10**6)}", rng.choice(SOURCES), FactKind.SALE, rng.choice(SKUS),
                    rng.choice(LOCATIONS), 1, self.world.clock.now_ms())
        flat = _flat(fact)
        how = rng.choice(("quantity", "kind", "missing", "repeated"))
        if how == "quantity":
            flat[flat.index(b"quantity") + 1] = b"1x"
        elif how == "kind":
            flat[flat.index(b"kind") + 1] = b"SOLD"
        elif how == "missing":
            at = flat.index(b"sku")
            del flat[at:at + 2]
        else:
            flat += [b"sku", b"Z"]
        return flat, f"malformed ({how})"

    def _fact(self) -> Fact:
        rng, now = self.rng, self.world.clock.now_ms()
        roll = rng.random()
        if self.produced and roll < 0.12:
            return rng.choice(self.produced)  # an exact duplicate: a producer's resend (E8)
        if self.produced and roll < 0.16:
            old = rng.choice(self.produced)  # a conflict (E8): same identity, another quantity
            qty = old.quantity + 1 if old.quantity != -1 else -2
            return Fact(old.event_id, old.source, old.kind, old.sku, old.location, qty, old.event_time)
        kind = rng.choice(KINDS)
        qty = (rng.randint(-3, 3) or 1) if kind == FactKind.ADJUST else rng.randint(0 if kind == FactKind.COUNT
                                                                                      else 1, 12)
        at = now - rng.randint(0, 120_000)  # out of event-time order
        if self.produced and rng.random() < 0.2:
            at = rng.choice(self.produced).event_time  # an E1 tie
        if (ahead := self._ahead(now)) is not None:
            at = ahead
        fact = Fact(f"f{len(self.produced)}", rng.choice(SOURCES), kind, rng.choice(SKUS), rng.choice(LOCATIONS),
                    qty, at)
        self.produced.append(fact)
        return fact

    def _ahead(self, now: int) -> int | None:
        """``--fact-times``: a new fact's stamp about E7's allowed skew ahead of the world's clock, or None (as drawn).
        Half within twice the hosts' skew of the bound (``skew.SKEW_BOUND_MS``: a host behind the world refuses what
        one ahead applies), half within ``claim_idle_ms`` of it (refused when read, applied when claimed, or read again
        once the world's clock moved on)."""
        if self.ahead is None or self.ahead.random() >= AHEAD_P:
            return None
        near = 2 * SKEW_BOUND_MS if self.ahead.random() < 0.5 else CLAIM_IDLE_MS
        return now + self.world.config.limits.fact_future_skew_ms + self.ahead.randint(-near, near)


def ahead_draws(seed: int, fact_times: bool) -> random.Random | None:
    """``--fact-times``: the producer's draws of facts stamped ahead, a stream of their own (None: without the flag)."""
    return random.Random(f"fact times {seed}") if fact_times else None


def _flat(fact: Fact) -> list[bytes]:
    """An input entry's fields, in the documented order (``entries.REQUIRED``)."""
    values = (fact.event_id, fact.source, FactKind(fact.kind).name, fact.sku, fact.location, fact.quantity,
              fact.event_time)
    return [str(v).encode() for pair in zip(NAMES, values, strict=True) for v in pair]
