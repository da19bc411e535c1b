"""The quarantine stream (E6, E8): a quarantined fact is written to it once, however often it is decided.

A fact's outcome is durable in its shard log before its quarantine entry is written, and the input
entry it came from is acknowledged only after both: a crash (or an acknowledgement lost) in between
has the entry read again and its fact decided again — quarantined again, for it is still late, still
in conflict. Operators reconcile the quarantine entries against their own systems, one entry a fact:
so each write is keyed by the fact, its identity and payload (E8), and a script adds the entry only
where the set beside the stream (``written_key``: the digests of the facts written, scored by
their entries' times) does not hold it. The set is trimmed to the stream's own length: it says what
the stream holds, never more — a flood of late facts costs Redis no more than the stream does.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from reservation import Fact, FactKind
from reservation._keys import fact_key, fact_payload

CHUNK = 100
"""Facts one script call writes (its arguments stay far below Lua's stack; a large LoadCounts
quarantining thousands of rows is that many calls pipelined)."""
DOUBT_LIMIT = 10_000
"""Facts whose quarantine write's answer was lost that this process remembers, to count each once
when a retry finds it written (a process restarted, or another claiming the entry, counts it duplicate)."""
_KIND_NAMES = {k.value: k.name for k in FactKind}
_FIELDS = 9
_PER_FACT = 1 + 2 * _FIELDS  # its digest, then its entry's field names and values

# KEYS: the stream, the set of written facts' digests; ARGV: MAXLEN, then _PER_FACT values a fact.
# Returns, a fact, 1: written now, 0: written before. The entry and its digest go in the same script
# (atomic); the set is trimmed to MAXLEN, oldest first, as the stream is (about MAXLEN entries).
_ONCE = f"""
local written = {{}}
local n = (#ARGV - 1) / {_PER_FACT}
for f = 0, n - 1 do
  local at = 2 + f * {_PER_FACT}
  if redis.call('ZSCORE', KEYS[2], ARGV[at]) then
    written[f + 1] = 0
  else
    local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, at + 1, at + {2 * _FIELDS}))
    redis.call('ZADD', KEYS[2], string.match(id, '^%d+'), ARGV[at])
    written[f + 1] = 1
  end
end
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[1])
if extra > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1)
end
return written
"""


class QuarantineStream:
    """Writes quarantined facts to ``stream`` (trimmed to about ``maxlen``), each once. The set of what
    it holds sits beside the stream, named after it (its hash tag: the same Redis Cluster slot)."""

    def __init__(self, stream: str, maxlen: int) -> None:
        self.stream, self._maxlen = stream, maxlen
        self.written_key = written_key(stream)
        """The digests of the facts the stream holds (at most about ``maxlen``)."""
        self._doubt: OrderedDict[str, None] = OrderedDict()
        """Digests of facts whose write's answer was lost here, oldest first: written or not, counted by none."""

    @staticmethod
    def digest(fact: Fact) -> str:
        """What names ``fact`` (its identity and payload) in the set of facts written."""
        return hashlib.blake2b(f"{fact_key(fact)}\x1f{fact_payload(fact)}".encode(), digest_size=16).hexdigest()

    async def write(self, client: Any, facts: Sequence[tuple[Fact, str]]) -> list[bool]:
        """Each (fact, reason) written to the stream unless the stream holds it already; per fact, True:
        written now — or by a write of this process whose answer was lost, counted by none (E6: a metric
        counts each quarantined fact). Raises what Redis raised (then any of them may have been written:
        a retry writes the rest)."""
        digests = [self.digest(fact) for fact, _ in facts]
        try:
            async with client.pipeline(transaction=False) as pipe:
                for start in range(0, len(facts), CHUNK):
                    values = [v for (fact, reason), d in zip(facts[start:start + CHUNK], digests[start:start + CHUNK],
                                                               strict=True) for v in (d, *_flat(fields(fact, reason)))]
                    pipe.eval(_ONCE, 2, self.stream, self.written_key, self._maxlen, *values)
                replies = await pipe.execute()
        except BaseException:  # a timeout, a reset, a cancel: each may have been written, uncounted
            self._doubt.update(dict.fromkeys(digests))
            while len(self._doubt) > DOUBT_LIMIT:
                self._doubt.popitem(last=False)
            raise
        flags = [bool(flag) for reply in replies for flag in reply]
        if self._doubt:
            flags = [self._doubt.pop(d, True) is None or flag for d, flag in zip(digests, flags, strict=True)]
        return flags


def written_key(stream: str) -> str:
    """The set of what ``stream`` holds, in the stream's Redis Cluster slot (the script's two keys): with
    its hash tag (``atp:{in}:quarantine:written``), or, a stream without one, the stream's name as its
    tag (``atp:quarantine:written:{atp:quarantine}``: nothing asks a cluster without input streams for
    a tag), under the stream's name all the same (an ACL's ``~atp:*`` covers it)."""
    if "{" in stream or "}" in stream:
        return f"{stream}:written"
    return f"{stream}:written:{{{stream}}}"


def _flat(entry: dict[str, Any]) -> list[Any]:
    return [v for kv in entry.items() for v in kv]


def fields(fact: Fact, reason: str) -> dict[str, Any]:
    """A quarantine entry's fields (OPERATIONS.md): the reason, then the fact as an input entry has it."""
    return {
        "reason": reason, "event_id": fact.event_id, "source": fact.source, "kind": _KIND_NAMES[fact.kind],
        "sku": fact.sku, "location": fact.location, "quantity": fact.quantity,
        "event_time_ms": fact.event_time, "reservation_id": fact.reservation_id,
    }
