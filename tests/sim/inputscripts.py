"""The scripts the input-stream readers run, as their Lua does it over ``inputstreams.SimStreams`` (atomic: nothing
else runs meanwhile): the quarantine script (``quarantine._ONCE``), the claim (``claims._CLAIM``: Redis 7.0's
``XAUTOCLAIM``, the dead letters of the entries it finds trimmed written in the same script) and the dead letters'
(``dead_letters._WRITE``: each written, then each entry acknowledged, whichever consumer holds it).

``XAUTOCLAIM`` as redis-server 7.0 answers it (checked against one): the group's pending entries from the cursor
on, in id order, at most ``COUNT * 10`` looked at; one idle less than the minimum skipped (not counted), one whose
entry was trimmed taken out of the pending list and its id listed apart (counted), each other one given to the
claiming consumer, its delivery count raised and its idle time reset (counted); the cursor the next pending id
after the last looked at, ``0-0`` at the list's end. No group: ``NOGROUP``, nothing done.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from atp_service.intake.entries import id_key
from atp_service.intake.quarantine import _FIELDS, _PER_FACT
from atp_service.intake.runs import SWEPT
from tests.sim.inputsweep import seen

if TYPE_CHECKING:
    from tests.sim.inputstreams import SimStreams


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _holding(redis: SimStreams, inputs: list[str], group: str, consumer: str, values: list[Any]) -> bool:
    """Whether an entry of the write's facts is pending to ``consumer`` (``quarantine._ONCE``: its run key, gone,
    taken back only then — a consumer swept, holding none, left a key no sweep visits again)."""
    for at in range(0, len(values), _PER_FACT):
        index = int(values[at + 1])
        try:
            if index > 0 and redis.xpending_one(inputs[index - 6], group, _id(values[at + 2]), consumer):
                return True
        except ResponseError:
            continue  # NOGROUP: pending nowhere
    return False


def quarantine_once(redis: SimStreams, keys: list[str], args: list[Any]) -> list[int]:
    """``quarantine._ONCE``: a fact written once by its digest; its input entry acknowledged in the same script,
    only while pending to the consumer writing it (-1 where another holds it now: that one decides the fact). KEYS
    the quarantine stream, its set, the consumer's run, the hash of entries ahead, its draws' record, then the input
    streams. A write of a run before (the run key past it) lands nothing; a run key gone or behind is one Redis lost,
    taken again — but one gone whose run is at or below the consumer's own run swept (``runs.SWEPT`` in its record)
    was deleted by a sweep (``inputsweep``, never lost: set with the deletion), and one below a draw its record holds
    is a run before: refused, whenever it lands (E8)."""
    stream, written_key, run, ahead_key, drawn, inputs = keys[0], keys[1], keys[2], keys[3], keys[4], keys[5:]
    group, consumer = _text(args[1]), _text(args[2])
    current = True  # a later run's write before: nothing; a run lost (gone, behind) taken again
    if _text(args[3]) != "":
        ours, held = int(_text(args[3])), redis.runs.get(run)
        record = redis.drawn.get(drawn, {}) if held is None else {}  # ``--new-addresses``: the sweep's
        highest, drew = record.get(SWEPT), max(record.values(), default=None)
        if (highest is not None and ours <= highest) or (drew is not None and drew > ours):  # swept, or a run before
            current = False
            redis.refused_swept += 1
        elif (held or 0) > ours:
            current = False
        elif held is not None and held < ours:
            redis.runs[run] = ours
        elif held is None and _holding(redis, inputs, group, consumer, args[4:]):
            redis.runs[run] = ours  # gone: taken back by a write holding an entry pending to it only (else a leak)
    written = redis.written.setdefault(written_key, {})
    values, out = args[4:], []
    assert len(values) % _PER_FACT == 0
    for at in range(0, len(values), _PER_FACT):
        digest, index, entry_id = _text(values[at]), int(values[at + 1]), _id(values[at + 2])
        flat = values[at + 3:at + 3 + 2 * _FIELDS]
        ours, input_stream = True, inputs[index - 6] if index > 0 else None
        if input_stream is not None:
            try:
                ours = current and bool(redis.xpending_one(input_stream, group, entry_id, consumer))
            except ResponseError:
                ours = current  # NOGROUP: pending nowhere, written as ever
        if digest in written:
            out.append(0)
        elif not ours:
            out.append(-1)
            if not current and input_stream is not None:  # its run fenced: no write of it lands (``inputowed``)
                fenced = input_stream, entry_id, consumer
                redis.fenced[fenced] = redis.fenced.get(fenced, 0) + 1
        else:
            fields = {_text(k): _text(v) for k, v in zip(flat[0::2], flat[1::2], strict=True)}
            redis.quarantined.append((stream, fields, None if input_stream is None else (input_stream, entry_id)))
            written[digest] = redis.now_ms()  # the quarantine entry's id's time, its score: in the order written
            held = redis.streams.get(input_stream) if input_stream is not None else None
            newest = next(reversed(held.entries), entry_id) if held else entry_id  # XREVRANGE: the stream's newest
            last = max(entry_id, newest, key=id_key)
            if input_stream is not None and id_key(last)[0] > written[digest]:  # a producer's own ids, ahead
                redis.named_ahead.setdefault(ahead_key, {})[digest] = last + b" " + input_stream.encode()
            out.append(1)
        if input_stream is not None and ours:
            redis.xack(input_stream, group, entry_id)  # redis.pcall: XACK answers 0 without the group
    return out


def autoclaim(redis: SimStreams, keys: list[str], args: list[Any]) -> list[Any]:
    """``claims._CLAIM``: ``XAUTOCLAIM stream group consumer min-idle start COUNT n``, then a dead letter for each
    entry it found trimmed (``TRIMMED_WHILE_PENDING``) on the dead-letter stream; the group's made-again mark after."""
    stream, dlq, mark = keys
    group, consumer, min_idle, start, count = _text(args[0]), _text(args[1]), int(args[2]), _id(args[3]), int(args[4])
    held, mine = redis._group(stream, group)  # NOGROUP: the script fails at the XAUTOCLAIM, before any write
    now, attempts = redis.now_ms(), count * 10
    claimed: list[list[Any]] = []
    deleted: list[bytes] = []
    ids = [entry_id for entry_id in sorted(mine.pending, key=id_key) if id_key(entry_id) >= id_key(start)]
    cursor = b"0-0"
    for entry_id in ids:
        if not attempts or not count:
            cursor = entry_id
            break
        attempts -= 1
        holder = mine.pending[entry_id]
        if now - holder[2] < min_idle:
            continue
        count -= 1
        flat = held.entries.get(entry_id)
        if flat is None:
            del mine.pending[entry_id]
            deleted.append(entry_id)
            redis.unclaimed.add((stream, entry_id))
            continue
        if holder[0] != consumer:
            redis.claimed += 1
            redis.taken[(stream, entry_id)] = redis.taken.get((stream, entry_id), 0) + 1
        mine.pending[entry_id] = [consumer, holder[1] + 1, now]
        claimed.append([entry_id, list(flat)])
        redis.note_again(stream, held, entry_id, consumer)
    for entry_id in deleted:
        redis.dead_letters.append((dlq, {"_code": "TRIMMED_WHILE_PENDING", "_stream": stream,
                                         "_id": entry_id.decode()}))
    seen(redis, stream, group, consumer, bool(claimed))  # the claimer made where new, its idle time reset by a claim
    return [cursor, claimed, deleted, redis.marks.get(mark)]


def write_dead_letters(redis: SimStreams, keys: list[str], args: list[Any]) -> list[Any]:
    """``dead_letters._WRITE``: KEYS the dead-letter stream, then each letter's input stream, each one's refused set,
    each one's letters' hash, the consumer's fence; ARGV MAXLEN, the group, the most kept refused per stream, the
    consumer, its fence's token (another held: nothing written, every entry's KEYS index returned fourth), then per
    letter
    its entry's id, 1 where it was read trimmed, the id of its letter written before or '', '' or why it is kept
    refused, its count of names and values, those. ``XACK`` by ``redis.pcall``. An entry read trimmed that the stream
    holds is left pending, its KEYS index returned; one pending to the consumer no more (delivered again elsewhere: its
    group made again, or claimed) neither written, acknowledged nor kept refused, its KEYS index returned last (NOGROUP:
    written as ever); per entry acknowledged, its KEYS index and its letter's id (the one written before where the
    dead-letter stream holds it, naming this entry: the n-th letter's id ``n-0``); per refused set past the most, a KEYS
    index and how many it forgot (``_forget``)."""
    count = (len(keys) - 2) // 3
    dlq, inputs, sets, group = keys[0], keys[1:1 + count], keys[1 + count:1 + 2 * count], _text(args[1])
    if redis.fences.get(keys[-1]) != _id(args[4]):  # the fence holds another token (``fence.py``): nothing written
        return [[], [], [], [i + 2 for i in range(count)], 1]
    at, ids, kept, letters, touched, away, consumer = 5, [], [], [], {}, [], _text(args[3])
    for i, stream in enumerate(inputs):
        entry_id, trimmed, earlier, why, n = (_id(args[at]), int(args[at + 1]) == 1, _id(args[at + 2]),
                                              _text(args[at + 3]), int(args[at + 4]))
        flat = args[at + 5:at + 5 + n]
        at += 5 + n
        held = redis.streams.get(stream)
        if trimmed and held is not None and entry_id in held.entries:
            kept.append(i + 2)
            continue
        if not _ours(redis, stream, group, entry_id, consumer):
            away.append(i + 2)
            redis.refusals_elsewhere += why != ""  # a refusal by a clock (E7) another reader now judges
            continue
        ids.append((stream, entry_id))
        letter = earlier
        if not (earlier and _holds(redis, earlier, stream, entry_id)):
            redis.dead_letters.append((dlq, {_text(k): _text(v) for k, v in zip(flat[0::2], flat[1::2], strict=True)}))
            letter = b"%d-0" % len(redis.dead_letters)
        letters += [i + 2, letter]
        if why:
            redis.refused.setdefault(sets[i], {})[_text(entry_id)] = letter + b"\n" + why.encode()
            touched[sets[i]] = (i + 2, stream)
    forgotten = [one for key, (i, stream) in touched.items() for one in _forget(redis, key, stream, int(args[2]), i)]
    for stream, entry_id in ids:
        redis.xack(stream, group, entry_id)
    return [kept, letters, forgotten, away, 0]


def letter_entries(keys: list[str], args: list[Any]) -> frozenset[tuple[str, bytes]]:
    """The input entries a dead letters' script names (``write_dead_letters``'s KEYS and ARGV)."""
    count, at, out = (len(keys) - 2) // 3, 5, set()
    for stream in keys[1:1 + count]:
        out.add((stream, _id(args[at])))
        at += 5 + int(args[at + 4])
    return frozenset(out)


def _ours(redis: SimStreams, stream: str, group: str, entry_id: bytes, consumer: str) -> bool:
    """The Lua's ``ours``: the entry pending to ``consumer`` in ``group``; the group gone (NOGROUP), as ever."""
    try:
        return bool(redis.xpending_one(stream, group, entry_id, consumer))
    except ResponseError:
        return True


def _forget(redis: SimStreams, key: str, stream: str, most: int, index: int) -> list[int]:
    """A refused set's entries before its stream's oldest (all, where it holds none) forgotten, then its oldest past
    ``most`` (by score, the id's time, then as Redis orders members of one score): ``[index, how many]`` where any."""
    kept, held = redis.refused[key], redis.streams.get(stream)
    first = next(iter(held.entries), None) if held is not None else None
    for entry_id in [e for e in kept if first is None or id_key(_id(e))[0] < id_key(first)[0]]:
        del kept[entry_id]
    over = sorted(kept, key=lambda e: (id_key(_id(e))[0], _id(e)))[:max(len(kept) - most, 0)]
    for entry_id in over:
        del kept[entry_id]
    return [index, len(over)] if over else []


def _holds(redis: SimStreams, earlier: bytes, stream: str, entry_id: bytes) -> bool:
    """The Lua's ``holds``: the letter at ``earlier`` names this entry — an id alone may name another entry's letter,
    written since Redis came back from older data (``inputtail``: the letters after its image lost, their ids given
    again)."""
    n = int(earlier.split(b"-")[0])
    if not 0 < n <= len(redis.dead_letters):
        return False
    fields = redis.dead_letters[n - 1][1]
    return fields.get("_stream") == stream and fields.get("_id") == entry_id.decode()


def tag(redis: SimStreams, keys: list[str], args: list[Any]) -> list[Any]:
    """``bounds._TAG``: per input stream, its group's last delivered entry, the oldest entry pending in the group, with
    any consumer, and the stream's oldest entry (None where it has no such group); each of the consumer's tokens then
    set."""
    n, (group, token) = len(keys) // 2, (_text(args[0]), _id(args[2]))
    out: list[Any] = []
    for stream in keys[:n]:
        held = redis.streams.get(stream)
        mine = held.groups.get(group) if held is not None else None
        oldest = None if mine is None else min(mine.pending, key=id_key, default=None)
        out.append(None if mine is None else [mine.last, oldest, next(iter(held.entries), None)])  # type: ignore[union-attr]
    for key in keys[n:]:
        redis.tokens[key] = token
    return out
