"""``--input-streams --processes 2|3 --new-addresses``: the group's consumers as Redis keeps them, and the sweep of
departed consumers (``intake/departed.py``) as its script (``_SWEEP``) runs.

A consumer is made by the first read or claim naming it (``XREADGROUP``, ``XAUTOCLAIM``), its idle time the time since
a read or a claim last gave it an entry — a read that delivers nothing leaves it as it was (Redis before 7.2: the
product's own assumption, ``unread.answered_key``). A read that answers a non-empty owed hash marks it answered (the
mark, by Redis's clock, kept ``unread.ANSWERED_MS``). ``XINFO CONSUMERS`` answers each consumer's name, entries pending
to it and idle time; ``XGROUP DELCONSUMER`` takes it (and its pending entries: none where the sweep removes it) away.
The sweep script: a candidate is removed where, on every input stream that has it, nothing is pending to it and it was
idle at least ``claim_idle_ms``, its answered mark is older than that, and it has an owed hash, a consumer or a run
key at all (a run key's consumer in no group: its process gone before its first read, or its group deleted);
its owed counts then move into the sweeper's hash (the earlier position before the first gap kept), its hash and mark
are deleted and it is removed from every stream's group and from the draw's set of names (``runs.drawn_names_key``),
the sweeper named in the set of those owing where it had an owed hash (``unread.owing_key``): one step, as Redis runs
a script.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from atp_service.intake.entries import id_key
from atp_service.intake.runs import SWEPT, TOKENS_KEPT
from atp_service.intake.unread import ANSWERED_MS
from tests.sim.inputpipeline import _text

if TYPE_CHECKING:
    from tests.sim.inputstreams import SimStreams


def seen(redis: SimStreams, stream: str, group: str, consumer: str, gave: bool) -> None:
    """A read or claim by ``consumer``: made where it is new; its idle time reset where it was given an entry."""
    held = redis.streams.get(stream)
    mine = held.groups.get(group) if held is not None else None
    if mine is not None and (gave or consumer not in mine.consumers):
        mine.consumers[consumer] = redis.now_ms()


def consumers(redis: SimStreams, stream: str, group: str) -> list[dict[str, Any]]:
    """``XINFO CONSUMERS stream group`` (no such key, NOGROUP: refused as Redis refuses them)."""
    _, mine = redis._group(stream, group)
    now = redis.now_ms()
    pending: dict[str, int] = {}
    for holder in mine.pending.values():
        pending[holder[0]] = pending.get(holder[0], 0) + 1
    return [{"name": name.encode(), "pending": pending.get(name, 0), "idle": now - at}
            for name, at in mine.consumers.items()]


def answered(redis: SimStreams, key: str) -> int | None:
    """When the answered mark ``key`` was set (ms), None where there is none (or it ran out)."""
    at = redis.answered.get(key)
    return at if at is not None and redis.now_ms() - at < redis.answered_ms.get(key, ANSWERED_MS) else None


def sweep(redis: SimStreams, keys: list[str], args: list[Any]) -> list[list[Any]]:
    """``departed._SWEEP``: KEYS the input streams, the sweeper's owed hash, the highest run swept, the group's set of
    consumers owing, its drawn names (``runs.drawn_names_key``), then each candidate's owed hash, its answered mark,
    its quarantine run and its draw's record; ARGV the group, the least idle ms, then each candidate's name. Returns
    {name, entries moved} of each consumer removed."""
    group, least, names = _text(args[0]), int(args[1]), [_text(name) for name in args[2:]]
    n = len(keys) - 4 * len(names) - 4
    swept, owing = keys[n + 1], redis.owing.setdefault(keys[n + 2], set())
    drew = redis.owing.setdefault(keys[n + 3], set())
    streams, now = keys[:n], redis.now_ms()
    listed: dict[str, dict[str, tuple[int, int]]] = {}
    for stream in streams:
        held = redis.streams.get(stream)
        if held is not None and group in held.groups:
            listed[stream] = {_text(c["name"]): (c["pending"], c["idle"]) for c in consumers(redis, stream, group)}
    mine = redis.hashes.setdefault(keys[n], {})
    removed: list[list[Any]] = []
    for j, name in enumerate(names):
        owed_key, mark, run = keys[n + 4 + 4 * j], keys[n + 5 + 4 * j], keys[n + 6 + 4 * j]  # then its draws' record
        found = [by_name[name] for by_name in listed.values() if name in by_name]
        gone = all(pending == 0 and idle >= least for pending, idle in found)
        at = answered(redis, mark)
        if at is not None and now - at < least:
            gone = False
        owed = redis.hashes.get(owed_key) or {}
        if not owed and not found and run not in redis.runs:  # removed by another sweeper since it was listed, or none
            gone = False
            owing.discard(name)
            drew.discard(name)
        if not gone:
            continue
        moved = 0
        for field, value in owed.items():
            if field.endswith("\n"):  # the position before the first gap: the earlier one kept
                held_at = mine.get(field)
                if held_at is None or id_key(_as_id(held_at)) > id_key(_as_id(value)):
                    mine[field] = value
            elif int(value) > 0:
                mine[field] = int(mine.get(field, 0)) + int(value)
                moved += int(value)
        if owed:  # the sweeper owing now: named in the set (its name follows the set's key and ':' in its hash's)
            owing.add(keys[n][len(keys[n + 2]) + 1:])
        redis.hashes.pop(owed_key, None)
        owing.discard(name)
        drew.discard(name)
        ran = redis.runs.pop(run, None)  # its run: kept in its draws' record (left to expire), the highest of all too
        if ran is not None and ran > redis.runs_swept.get(swept, 0):
            redis.runs_swept[swept] = ran
        record = redis.drawn.setdefault(keys[n + 7 + 4 * j], {})
        if ran is not None and ran > record.get(SWEPT, 0):
            record[SWEPT] = ran
        redis.answered.pop(mark, None)
        redis.answered_ms.pop(mark, None)
        for stream in listed:  # XGROUP DELCONSUMER: its pending entries (none here) gone with it
            held = redis.streams[stream].groups[group]
            held.consumers.pop(name, None)
            held.pending = {entry_id: holder for entry_id, holder in held.pending.items() if holder[0] != name}
        redis.swept.append((name, moved))
        removed.append([name.encode(), moved])
    return removed


def _as_id(value: int | bytes) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def draw_run(redis: SimStreams, keys: list[str], args: list[Any]) -> int:
    """``runs.DRAW`` (``QuarantineStream.run_of``): the consumer's run drawn above its last, above the highest
    swept (set to 0 where none: every sweep names it) and above its record's runs (``SWEPT`` too), once per token
    (ARGV[1]: a retry of a draw whose answer was lost, or it landing late, returns the run it drew, recorded in its
    draws' record), else only where the key is still what its process read (ARGV[3]; -1: moved since), leased its
    answered mark set with it (a sweep meanwhile keeps it); the consumer (ARGV[4]) named with a key drawn in the
    group's drawn names (``runs.drawn_names_key``), which the sweep walks."""
    run_key, swept, drawn, names, *mark = keys
    token, record, held = _text(args[0]), redis.drawn.setdefault(drawn, {}), redis.runs.get(run_key)
    if token not in record and _text(args[2]) != ("" if held is None else str(held)):
        return -1  # another's draw since its process read the key: nothing drawn, read again
    redis.runs_swept.setdefault(swept, 0)
    if mark:
        redis.answered[mark[0]], redis.answered_ms[mark[0]] = redis.now_ms(), int(_text(args[1]))  # PX its life
    if token in record:
        return record[token]
    run = (held or 0) + 1
    floor = max(redis.runs_swept.get(swept, 0), max(record.values(), default=0))
    if run <= floor:
        run = floor + 1
    redis.runs[run_key] = run
    redis.owing.setdefault(names, set()).add(_text(args[3]))
    record[token] = run
    for gone in sorted(record, key=record.__getitem__)[:-TOKENS_KEPT]:
        del record[gone]
    return run
