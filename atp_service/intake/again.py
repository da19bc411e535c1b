"""Entries a consumer group made again delivers again: one whose fact the quarantine stream holds is not decided again.

A group made again (``StreamIngestor._create_groups``) starts before the oldest entry the reader may hold unacknowledged
— from the start of the stream where it has read nothing since its start, or where the group was found missing at the
start (deleted while the service was down) — so entries settled long ago come again. A duplicate is of no effect (E8)
and one refused by the clock is acknowledged as refused (``unacked.Unacked.judged``), but one whose fact was quarantined
for want of room (a shard's bound, ``max_on_hand``), written to the quarantine stream with its entry's XACK, was decided
again: applied, had room come back (the bound raised and the service restarted, as the runbook says), while the
quarantine stream, what operators reconcile against, showed it not applied. So an entry at or before the stream's newest
entry when this reader made its group, whose fact the quarantine stream holds from a write made after the entry was
added (the written set's score, the quarantine entry's time, at or past the entry id's), is acknowledged as it is: its
quarantine stands (E8: decided once). An operator's resend of it from the quarantine stream is a later entry, decided as
any.
"""

from __future__ import annotations

from typing import Any

from atp_service.intake.entries import Read, id_key
from atp_service.intake.quarantine import QuarantineStream
from atp_service.intake.unacked import Unacked
from atp_service.intake.unread import make_group_after
from atp_service.storage.resp import as_text, make_group, stream_info
from reservation import Fact


async def make_group_again(client: Any, stream: str, group: str, start: bytes, unacked: Unacked) -> bool:
    """The group made on ``stream`` after ``start`` where it is missing (True: made now), and then the stream's newest
    entry kept (``unacked.again``): the entries up to it may have been settled before, and come again."""
    # After an entry: its count of entries read set, else a gap it crosses is never counted.
    made: bool = await (make_group_after(client, stream, group, start) if start != b"0" else
                        make_group(client, stream, group, start))
    if made:
        info = await stream_info(client, stream)
        unacked.again[stream] = b"0-0" if info is None else as_text(info["last-generated-id"]).encode()
    return made


async def quarantined_before(client: Any, quarantine: QuarantineStream, unacked: Unacked, facts: list[Fact],
                             read: list[Read]) -> tuple[list[Fact], list[Read], list[tuple[str, bytes]]]:
    """``facts`` and ``read`` but those of the entries delivered again (at or before ``unacked.again``, by stream)
    whose facts the quarantine stream holds from a write made after the entry: those entries, to acknowledge."""
    again = unacked.again
    maybe = [n for n, (stream, entry_id, _) in enumerate(read)
             if stream in again and id_key(entry_id) <= id_key(again[stream])]
    if not maybe:
        return facts, read, []
    scores = await client.zmscore(quarantine.written_key, [QuarantineStream.digest(facts[n]) for n in maybe])
    held = {n for n, score in zip(maybe, scores, strict=True)
            if score is not None and id_key(read[n][1])[0] <= int(score)}
    if not held:
        return facts, read, []
    keep = [n for n in range(len(read)) if n not in held]
    return [facts[n] for n in keep], [read[n] for n in keep], [read[n][:2] for n in sorted(held)]
