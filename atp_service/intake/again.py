"""Entries a consumer group made again delivers again: one whose fact the quarantine stream holds is not decided again.

A group made again (``StreamIngestor._create_groups``) starts before the oldest entry the reader may hold
unacknowledged — from the start of the stream where it has read nothing since its start, or where the group was found
missing at the start (deleted while the service was down) — so entries settled long ago come again. A duplicate is of
no effect (E8) and one refused by the clock is acknowledged as refused (``unacked.Unacked.judged``), but one whose fact
was quarantined for want of room (a shard's bound, ``max_on_hand``), written to the quarantine stream with its entry's
XACK, was decided again: applied, had room come back (the bound raised and the service restarted, as the runbook says),
while the quarantine stream, what operators reconcile against, showed it not applied. So an entry at or before the
stream's newest entry when the group was made, whose fact the quarantine stream holds from a write made after the entry
was added (the written set's score, the quarantine entry's time, at or past the entry id's; or, where a producer's own
ids ran ahead of Redis's clock, the entry named beside by its fact's digest, ``quarantine.ahead_key`` — the stream's
newest when the fact was written —, that one or one before it on the same stream), is acknowledged as it is: its
quarantine stands (E8: decided once). An operator's resend of it from the quarantine stream is a later entry, decided
as any.

Whichever reader takes such an entry: the group made again delivers it to any consumer — another process's reader
(``ATP_OWNERSHIP=leases``), which saw no ``NOGROUP``, or one started since. So the newest entry then is a mark in Redis
(``unread.made_again_key``: beside the stream), set by the script that makes the group (``unread._MAKE``); the script of
every read of new entries (``unread._READ``) and of every claim (``claims._CLAIM``) answers it with the entries it
delivers, and a start's make of the group (there already) answers it too: no call of its own, and the quarantine
stream's set (``ZMSCORE``, and ``HMGET`` of the entries named ahead beside it) asked only for a batch holding entries at
or before it — and no mark made where that set is empty and no entry of the stream is kept refused (E7,
``refused_kept.py``: asked for under the mark too): a first start on streams filled beforehand, nothing there was
quarantined or refused. The read forgets it once no entry at or before it can come again — the group's position at or
past it, none pending up to it —, so it lasts while the entries it covers are delivered again, not for good.
"""

from __future__ import annotations

from typing import Any

from atp_service.intake.bounds import made_anew
from atp_service.intake.entries import Ahead, Read, id_key
from atp_service.intake.quarantine import QuarantineStream
from atp_service.intake.unacked import Unacked
from atp_service.intake.unread import as_bytes, made_again_key, make_group_marked
from reservation import Fact


async def make_group_again(client: Any, stream: str, group: str, unacked: Unacked, written: str, bound: str,
                           tagged: list[tuple[bytes, bytes]], seen: tuple[bytes, str] | None = None
                           ) -> tuple[bool, bytes]:
    """The group made on ``stream`` where it is missing (True: made now) after the id told with the token Redis holds
    in ``bound`` of ``tagged`` (``bounds.start_again``), else from the stream's start; the stream's newest entry then
    its mark (``unacked.again``, and Redis's for every reader) where ``written``, the quarantine stream's set, holds
    any fact, or the stream's entries kept refused (E7) any: the entries up to it may have been settled before, and
    come again. Where it was there, the mark it has (a process started since it was made). Made, the group reads after
    the id it answers, and the reader's ``seen`` goes back to the newest entry at or before it (``Unacked.starts_at``);
    perhaps made (the script's answer lost: Redis may have run it), from the stream's start (E6). The bound of
    ``tagged`` is used only where the stream holds ``seen``, the newest entry read (``bounds.start_again``): else it
    was made anew, said and its memory here forgotten (``bounds.made_anew``)."""
    try:
        made, mark, start, anew, below = await make_group_marked(client, stream, group, b"0", written, bound, tagged,
                                                                 seen)
    except BaseException:
        unacked.starts_at(stream, b"0")
        raise
    if made:
        unacked.starts_at(stream, start, below)
    unacked.marked({stream: mark})
    if anew:
        made_anew(stream, seen, unacked)
    return made, start


_PENDING = """
-- KEYS: the input streams, then each one's made-again mark. ARGV: group, consumer, count, then per stream the id to
-- read the consumer's own pending entries after. Returns {the XREADGROUP reply, {mark per stream, or false}}: one
-- step, so that no change of Redis (a restore from older data, a group made again) falls between the entries and
-- the marks that tell whether they may have been decided before (E8). The marks are read first: a mark of another
-- type (an operator's key) or one the ACL denies fails the script before its XREADGROUP changed anything.
local n = #KEYS / 2
local args, marks = {'XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS'}, {}
for i = 1, n do
  local kind = redis.call('TYPE', KEYS[n + i])['ok']
  marks[i] = kind == 'string' and redis.call('GET', KEYS[n + i])
  if kind ~= 'none' and not (marks[i] and string.match(marks[i], '^%d+%-%d+$')) then
    return redis.error_reply('WRONGTYPE ' .. KEYS[n + i] .. ' holds no entry id: nothing read')
  end
  args[#args + 1] = KEYS[i]
end
for i = 1, n do args[#args + 1] = ARGV[3 + i] end
return {redis.call(unpack(args)), marks}
"""


async def read_pending(client: Any, streams: list[str], group: str, consumer: str, count: int, after: list[str]
                       ) -> tuple[Any, dict[str, bytes | None]]:
    """Up to ``count`` of ``consumer``'s own pending entries per stream after the ids ``after`` (the raw XREADGROUP
    reply), and each stream's made-again mark as Redis holds it (None: none), in one script (``_PENDING``). Some may
    be entries the group made again delivered by a read whose answer, the mark with it, was lost (a timeout): the
    mark answered with them tells them, whatever Redis went through before or after (back from older data) — the
    reader keeps its own while the reply holds an entry at or before it (``Unacked.marked``). Its answer lost, the
    entries stay pending (the read only raised their delivery counts) and are read again by the next pass."""
    keys = [*streams, *(made_again_key(stream, group) for stream in streams)]
    reply, marks = await client.register_script(_PENDING)(keys=keys, args=[group, consumer, count, *after])
    told = zip(streams, marks, strict=True)
    return reply, {stream: None if mark is None else as_bytes(mark) for stream, mark in told}


async def quarantined_before(client: Any, quarantine: QuarantineStream, unacked: Unacked, facts: list[Fact],
                             read: list[Read], ahead: list[Ahead]
                             ) -> tuple[list[Fact], list[Read], list[Ahead], list[tuple[str, bytes]]]:
    """``facts`` and ``read`` (and ``ahead``) but those of the entries delivered again (at or before ``unacked.again``,
    by stream) whose facts the quarantine stream holds from a write made after the entry: those entries, to
    acknowledge. ``ahead``: facts stamped past the allowed skew by this reader's clock (E7), checked alike — judged
    again, one quarantined by a clock ahead of this one was dead-lettered as in the future, or sent to its group's
    owner and applied there with room come back (E8: decided once)."""
    pairs = [*zip(facts, read, strict=True), *((fact, entry) for fact, entry, _ in ahead)]
    again = unacked.again
    maybe = [n for n, (_, (stream, entry_id, _)) in enumerate(pairs)
             if stream in again and id_key(entry_id) <= id_key(again[stream])]
    if not maybe:
        return facts, read, ahead, []
    digests = [QuarantineStream.digest(pairs[n][0]) for n in maybe]
    streams = list(dict.fromkeys(pairs[n][1][0] for n in maybe))
    async with client.pipeline(transaction=False) as pipe:
        pipe.zmscore(quarantine.written_key, digests)
        pipe.hmget(quarantine.ahead_key, digests)
        for stream in streams:  # each one's newest entry: an entry named past it is of a stream deleted since
            pipe.xrevrange(stream, "+", "-", count=1)
        scores, named, *newest = await pipe.execute()
    last = {stream: id_key(as_bytes(got[0][0])) if got else (0, 0) for stream, got in zip(streams, newest, strict=True)}
    for _, (stream, entry_id, _) in pairs:  # an entry read was there: the stream deleted since the read, no later one
        if stream in last:
            last[stream] = max(last[stream], id_key(entry_id))
    held = {n for n, score, entry in zip(maybe, scores, named, strict=True)
            if score is not None and _written_after(pairs[n][1], score, entry, last[pairs[n][1][0]])}
    if not held:
        return facts, read, ahead, []
    keep = [n for n in range(len(read)) if n not in held]
    kept_ahead = [one for n, one in enumerate(ahead, len(read)) if n not in held]
    return [facts[n] for n in keep], [read[n] for n in keep], kept_ahead, [pairs[n][1][:2] for n in sorted(held)]


def _written_after(read: tuple[str, bytes, Any], score: float, named: Any, newest: tuple[int, int]) -> bool:
    """Whether the write of the fact of ``read`` (stream, entry id, ...), its score ``score`` (the write's time), was
    made after the entry was added (E8): the entry's id's time at or before it (compared as Redis keeps a score, a
    double), or, where a producer's own ids ran ahead of Redis's clock, the entry the one named with the fact (its
    stream's newest at the write: ``named``, ``quarantine.ahead_key``'s, None: none) or one before it on the same
    stream — a producer's retry added before the write included. A later entry (an operator's resend) is neither.
    One named past ``newest``, the stream's newest entry now, was named on a stream of that name deleted since (to be
    rid of its ids ahead, then written again, OPERATIONS.md ``ingest_stream_made_anew``): it names none of this one's,
    whose entries (an operator's resend of the fact there) are decided as any."""
    stream, entry_id = read[0], read[1]
    if float(id_key(entry_id)[0]) <= float(score):
        return True
    if named is None:
        return False
    named_id, _, named_stream = as_bytes(named).partition(b" ")
    return named_stream.decode() == stream and id_key(entry_id) <= id_key(named_id) <= newest
