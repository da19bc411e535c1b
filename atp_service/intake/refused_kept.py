"""Entries refused as stamped in the future (E7), kept as refused in Redis: whichever process reads one again, and
whenever, it is not judged again.

A fact is judged by the clock of the process that reads it: one stamped past the allowed skew is dead-lettered (E7).
A consumer group made again (deleted, Redis back without it) delivers its entries again from where it is made — from
the stream's start where Redis holds none of the reader's tokens (``bounds.py``) — and by then the stamp may be within
the skew of any clock: judged anew, the fact was applied, its dead letter saying it was refused. The memory of a
process (``unacked.Unacked.refused``) holds only what that process refused since its start: another process, or the
same one restarted, judged the entry again. The outcome then depended on which process read it, and when (E7, E8).

So the script that writes an entry's dead letter and acknowledges it (``dead_letters._WRITE``) keeps the entry
as refused in the same script — exactly once, also across a crash or a timeout (it ran whole or not at all) —
beside its stream (one Redis Cluster slot, its hash tag): a set of the entries' ids scored by their ids' time
(``unread.refused_key``) and a hash of each one's dead letter's id and why (``unread.refused_letters_key``). The group
is made again with its made-again mark where that set holds any entry (``unread._MAKE``), and an entry read at or
before the mark is asked for there (``recall``): one found is dead-lettered as it was (its letter standing, written
again only where the dead-letter stream lost it), not judged again. Bounded: forgotten once its stream no longer holds
it (trimmed: before the stream's oldest entry, at each write), and at most ``ingest_refused_kept`` per stream, the
oldest forgotten past it — counted (``atp_ingest_refused_forgotten_total``).

A refusal is kept only while its entry is pending to the consumer that judged it (``dead_letters._WRITE``): its group
deleted and made again before the script ran, the entry was delivered again — to another process, which found nothing
kept, judged it by its own clock and may have applied it. That reader's judgement is the one outcome; the first
reader's letter, acknowledgement and refusal are not written (its refusal never became durable). The group gone and not
made again yet, the refusal is written and kept: the group made after it delivers the entry as refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from atp_service.intake.dead_letters import Why, fingerprint
from atp_service.intake.entries import Dead, Entry, id_key
from atp_service.intake.unacked import Unacked
from atp_service.intake.unread import as_bytes, refused_letters_key
from atp_service.storage.resp import as_text


def unpacked(value: bytes) -> tuple[bytes, str | None, Why]:
    """A refused entry's dead letter's id, its fields' digest and why, as the write kept them
    (``dead_letters.packed``). Kept before the digest (letter, code, field, reason: a release before it, which Redis
    may hold still): no digest (None), its entry refused by its id alone, as it was kept."""
    letter, rest = value.split(b"\n", 1)
    digest, _, after = rest.partition(b"\n")
    if re.fullmatch(rb"[0-9a-f]{32}", digest) is None:  # a code never is 32 hex digits
        digest, after = b"", rest
    code, field, reason = after.split(b"\n", 2)
    why = Why(reason.decode(errors="replace"), field.decode(errors="replace"), code.decode())
    return letter, digest.decode() or None, why


async def recall(client: Any, group: str, unacked: Unacked, entries: Sequence[Entry]) -> None:
    """The entries of ``entries`` read at or before their stream's made-again mark (``unacked.again``: a group made
    again delivers them again) that Redis keeps as refused, told to ``unacked`` as refused with their letters: not
    judged again (``Unacked.judged``) — where its fields are those it had (``dead_letters.fingerprint``): an entry given
    the id of one refused on a stream since deleted is judged. One read with no fields (deleted or trimmed while
    pending) cannot be told from another given its id: dead-lettered as any entry deleted while pending
    (``TRIMMED_WHILE_PENDING``), not acknowledged under a letter that may hold another entry's fields and say it was
    refused. Kept before the digest (no digest), an entry is taken by its id alone. None asked where no mark is held:
    a group not made again delivers an entry once it is acknowledged (Redis back from older data, which lost the set
    too: the process's own memory)."""
    asked: dict[str, list[bytes]] = {}
    fields_of = {(stream, entry_id): fields for stream, entry_id, fields in entries}
    for stream, entry_id, _ in entries:
        mark = unacked.again.get(stream)
        if mark is not None and id_key(entry_id) <= id_key(mark):
            asked.setdefault(stream, []).append(entry_id)
    if not asked:
        return
    async with client.pipeline(transaction=False) as pipe:
        for stream, ids in asked.items():
            pipe.hmget(refused_letters_key(stream, group), [as_text(entry_id) for entry_id in ids])
        replies = await pipe.execute()
    found: list[tuple[Dead, bytes]] = []
    for (stream, ids), values in zip(asked.items(), replies, strict=True):
        for entry_id, value in zip(ids, values, strict=True):
            if value is None:
                continue
            letter, digest, why = unpacked(as_bytes(value))
            fields = fields_of[(stream, entry_id)]
            if digest is None or (fields is not None and fingerprint(fields) == digest):  # else maybe another's id
                found.append(((stream, entry_id, fields or [], why), letter))
    unacked.refused(found)
