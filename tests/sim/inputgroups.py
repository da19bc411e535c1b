"""``--input-streams``: a consumer group's life in the model of Redis (``inputstreams.SimStreams``): its streams and
groups, a group made (``XGROUP CREATE``; ``unread._MAKE``: at ``0`` or after an id, its count of entries read known
or not, its made-again mark), deleted (``XGROUP DESTROY``: its pending list gone with it, noted in ``groups_lost``),
and its made-again mark forgotten once the group is at or past it with nothing pending up to it (``unread._READ``).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from atp_service.intake.anew import entry_digest
from atp_service.intake.entries import id_key
from tests.sim.inputpipeline import _text

if TYPE_CHECKING:
    from tests.sim.inputstreams import SimStreams

MAKER: contextvars.ContextVar[tuple[str, int]] = contextvars.ContextVar("maker", default=("?", 0))
"""The reader that runs the calls (set by the driver): its consumer and ``id``; which one made a group again."""


def _id(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


@dataclass
class Group:
    last: bytes = b"0-0"  # the last entry delivered (``last-delivered-id``)
    pending: dict[bytes, list[Any]] = field(default_factory=dict)  # entry id -> [consumer, deliveries, at ms]
    counted: bool = True  # its count of entries read known (``entries-read``): a gap it crosses is counted
    consumers: dict[str, int] = field(default_factory=dict)  # name -> when last given an entry (``inputsweep``)


@dataclass
class Stream:
    entries: dict[bytes, list[bytes]] = field(default_factory=dict)  # in id order (ids only grow)
    groups: dict[str, Group] = field(default_factory=dict)
    last_id: bytes = b"0-0"  # ``last-generated-id``
    trimmed: list[bytes] = field(default_factory=list)  # ids trimmed away, oldest first
    remade: tuple[bytes, tuple[str, int]] | None = None  # its newest id when its group was last made again, by whom


def create(redis: SimStreams, stream: str, group: str, start: bytes) -> bool:
    """``XGROUP CREATE`` (BUSYGROUP where there); one made after a deletion, by the reader running it (``MAKER``)."""
    held = redis.streams.setdefault(stream, Stream())
    if group in held.groups:
        raise ResponseError("BUSYGROUP Consumer Group name already exists")
    held.groups[group] = Group(last=b"0-0" if start == b"0" else held.last_id if start == b"$" else start,
                               counted=start == b"0")
    for at, (lost_on, pending, maker) in enumerate(redis.groups_lost):
        if lost_on == stream and maker is None:
            redis.groups_lost[at] = (lost_on, pending, MAKER.get())
            held.remade = held.last_id, MAKER.get()
    return True


def destroy(redis: SimStreams, stream: str, group: str) -> None:
    """``XGROUP DESTROY``: the group and its pending list gone (an operator's, a Redis restored without it)."""
    held = redis.streams.get(stream)
    if held is not None and (mine := held.groups.pop(group, None)) is not None:
        pending = {entry_id: holder[0] for entry_id, holder in mine.pending.items()}
        for lost_on, before, _ in redis.groups_lost:  # held at an earlier deletion, not delivered since: held still
            for entry_id, holder in before.items():
                if lost_on == stream and (stream, entry_id) not in redis.delivered:
                    pending.setdefault(entry_id, holder)
        redis.groups_lost.append((stream, pending, None))
        redis.delivered = {entry for entry in redis.delivered if entry[0] != stream}  # the group made again: unread


def make(redis: SimStreams, keys: list[str], args: list[Any]) -> list[Any]:
    """``unread._MAKE``: made at ``0`` (counted) or after an id, the group's count of entries read set where no
    entry after ``start`` is gone and at most ``most`` follow it; its made-again mark the stream's newest id (none
    on an empty stream, or where the quarantine stream's set holds no fact and the stream's refused set no entry).
    There already (BUSYGROUP): nothing made, the mark it has answered. Tokens told (``bounds.py``): after the id
    told with the one the consumer's token holds, else after ``start`` — or where the stream is not the one the
    entry read was read in (``anew.py``), answered fourth; last, the newest entry at or before where it was
    made, with its fields' digest (None: none)."""
    (stream, mark, written, refused), group, start, most = keys[:4], _text(args[0]), _id(args[1]), int(args[2])
    anew = _text(args[3]) != "" and anew_lua(redis, stream, _id(args[3]), _text(args[4]))
    held_token = redis.tokens.get(keys[4]) if len(keys) > 4 and not anew else None
    start = next((_id(args[i + 1]) for i in range(5, len(args), 2) if _id(args[i]) == held_token), start)
    held = redis.streams.get(stream)
    below = None if held is None or start == b"0" else next(
        ([entry_id, entry_digest(held.entries[entry_id])] for entry_id in reversed(held.entries)
         if id_key(entry_id) <= id_key(start)), None)
    if held is not None and group in held.groups:
        return [0, redis.marks.get(mark), start, int(anew), below]
    first = next(iter(held.entries), None) if held is not None else None
    counted = start == b"0" or (first is not None and id_key(first) <= id_key(start) and
                                sum(id_key(e) > id_key(start) for e in held.entries) <= most)  # type: ignore[union-attr]
    create(redis, stream, group, start)
    redis.streams[stream].groups[group].counted = counted
    newest = redis.streams[stream].last_id
    if newest == b"0-0" or not (redis.written.get(written) or redis.refused.get(refused)):  # none held or refused
        redis.marks.pop(mark, None)
        return [1, None, start, int(anew), below]
    redis.marks[mark] = newest
    return [1, newest, start, int(anew), below]


def anew_lua(redis: SimStreams, stream: str, seen: bytes, digest: str) -> bool:
    """``anew.ANEW_LUA``: the stream gone, its ids short of ``seen``, or another entry there (``digest``), or none
    that a trim took (no XDEL here)."""
    held = redis.streams.get(stream)
    if held is None or id_key(seen) > id_key(held.last_id):
        return True
    if digest == "":
        return False
    if seen in held.entries:
        return entry_digest(held.entries[seen]) != digest
    first = next(iter(held.entries), None)
    return first is not None and id_key(first) <= id_key(seen)


def mark_kept(redis: SimStreams, stream: str, group: str, key: str, position: bytes) -> bytes | None:
    """The group's made-again mark, forgotten once the group is at or past it with nothing pending up to it."""
    mark = redis.marks.get(key)
    _, mine = redis._group(stream, group)
    if mark is not None and id_key(position) >= id_key(mark) and \
            not any(id_key(entry_id) <= id_key(mark) for entry_id in mine.pending):
        del redis.marks[key]
        return None
    return mark
