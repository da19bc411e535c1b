"""The quarantine stream (E6, E8): a quarantined fact is written to it once, however often it is decided.

A fact's outcome is durable in its shard log before its quarantine entry is written, and the input
entry it came from is acknowledged only after both: a crash (or an acknowledgement lost) in between
has the entry read again and its fact decided again — quarantined again, for it is still late, still
in conflict. Operators reconcile the quarantine entries against their own systems, one entry a fact:
so each write is keyed by the fact, its identity and payload (E8), and a script adds the entry only
where no marker beside the stream says it was written before. A marker lasts as long as the shards
remember the facts they applied (``fact_grace_ms``, E8's window).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from reservation import Fact, FactKind
from reservation._keys import fact_key, fact_payload

CHUNK = 100
"""Facts one script call writes (its arguments stay far below Lua's stack; a large LoadCounts
quarantining thousands of rows is that many calls pipelined)."""
_KIND_NAMES = {k.value: k.name for k in FactKind}
_FIELDS = 9

# KEYS: the stream, then one marker a fact; ARGV: MAXLEN, the markers' PX, then 2 * _FIELDS values a
# fact. Returns, a fact, 1: written now, 0: written before (its marker there). The entry is added
# before its marker is set: a script failing between the two leaves a fact written twice, never none.
_ONCE = f"""
local written = {{}}
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    local at = 3 + (i - 2) * {2 * _FIELDS}
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, at, at + {2 * _FIELDS - 1}))
    redis.call('SET', KEYS[i], '1', 'PX', ARGV[2])
    written[i - 1] = 1
  else
    written[i - 1] = 0
  end
end
return written
"""


class QuarantineStream:
    """Writes quarantined facts to ``stream`` (trimmed to about ``maxlen``), each once. The markers sit
    beside the stream, named after it (its hash tag: the same Redis Cluster slot)."""

    def __init__(self, stream: str, maxlen: int) -> None:
        self.stream, self._maxlen = stream, maxlen

    def marker(self, fact: Fact) -> str:
        """The key that says ``fact`` (its identity and payload) was written to the stream."""
        name = f"{fact_key(fact)}\x1f{fact_payload(fact)}".encode()
        return f"{self.stream}:once:{hashlib.blake2b(name, digest_size=16).hexdigest()}"

    async def write(self, client: Any, remember_ms: int, facts: Sequence[tuple[Fact, str]]) -> list[bool]:
        """Each (fact, reason) written to the stream unless written in the last ``remember_ms``; per
        fact, True: written now.
        Raises what Redis raised (then any of them may have been written: a retry writes the rest)."""
        async with client.pipeline(transaction=False) as pipe:
            for start in range(0, len(facts), CHUNK):
                chunk = facts[start:start + CHUNK]
                values = [v for fact, reason in chunk for kv in fields(fact, reason).items() for v in kv]
                pipe.eval(_ONCE, len(chunk) + 1, self.stream, *(self.marker(fact) for fact, _ in chunk),
                          self._maxlen, remember_ms, *values)
            replies = await pipe.execute()
        return [bool(flag) for reply in replies for flag in reply]


def fields(fact: Fact, reason: str) -> dict[str, Any]:
    """A quarantine entry's fields (OPERATIONS.md): the reason, then the fact as an input entry has it."""
    return {
        "reason": reason, "event_id": fact.event_id, "source": fact.source, "kind": _KIND_NAMES[fact.kind],
        "sku": fact.sku, "location": fact.location, "quantity": fact.quantity,
        "event_time_ms": fact.event_time, "reservation_id": fact.reservation_id,
    }
