"""State written by another build of the service (a rollback after an upgrade, a rolling update of
leased processes): what this build cannot read whole is refused, naming what and where, never served
with part of it dropped (R7, E10).

The stored records are msgpack arrays (``array_like``): a newer build that adds a field at the end
writes one element more. Read as a prefix, the older build would serve on without it."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import redis

from atp_service.storage.records import opened_snapshot
from tests.atp_service.edge.test_api import receipt
from tests.conftest import ServiceFactory

NEWER = "a field of a newer build"


def _stored(r: redis.Redis) -> list[Any]:
    """Shard 0's snapshot as plain msgpack (as another build's reader sees it), its header (the
    checksum) left off: set back as it is, it is read as a snapshot written before the header."""
    raw = r.get("atp:{g0}:snap")
    assert isinstance(raw, bytes)
    record: list[Any] = msgspec.msgpack.decode(opened_snapshot(raw, 0, "atp:{g0}:snap"))
    return record


async def _snapshot_of_r1(start_service: ServiceFactory, redis_url: str,
                          **reserve: Any) -> tuple[redis.Redis, list[Any]]:
    """A service's final snapshot of one shard holding ``r1`` (2 of 5 units at A@DC), as ``_stored`` reads it."""
    service, client = await start_service(shards=1)
    await client.record_events([receipt("e1", "A", "DC", 5)])
    await client.reserve("r1", [("A", "DC", 2)], **reserve)
    await client.close()
    await service.stop(grace_s=0.1)  # its final snapshot holds r1
    r = redis.Redis.from_url(redis_url)
    return r, _stored(r)


def _grown(record: list[Any], where: str) -> None:
    """``record`` (a snapshot) with one trailing element more at ``where``."""
    ledger = record[1]
    if where == "record":
        record.append(NEWER)
    elif where == "ledger":
        ledger.append(NEWER)
    elif where in ("store", "deltas", "seen"):
        ledger[{"store": 0, "deltas": 2, "seen": 3}[where]].append(NEWER)
    elif where == "reservation":
        ledger[1][0].append(NEWER)
    else:
        assert where == "line", where
        ledger[1][0][6][0] = [*ledger[1][0][6][0], NEWER]


@pytest.mark.parametrize("where", ["record", "ledger", "store", "deltas", "seen", "reservation", "line"])
async def test_a_snapshot_a_newer_build_wrote_is_refused_at_start_not_served_short(
        start_service: ServiceFactory, redis_url: str, where: str) -> None:
    """Read as a prefix, the extra element was dropped without a word and the shard served on (a
    reservation's new field lost, then written back without it by the next snapshot)."""
    from atp_service.app.keyspace import StartupError

    r, record = await _snapshot_of_r1(start_service, redis_url)
    assert record[1][1][0][0] == "r1"
    _grown(record, where)
    r.set("atp:{g0}:snap", msgspec.msgpack.encode(record))
    with pytest.raises(StartupError, match=r"shard 0: the snapshot at atp:\{g0\}:snap is not in this version's "
                                           r"layout .*at most length .*start the version that wrote it"):
        await start_service(shards=1)


async def test_a_snapshot_an_older_build_wrote_without_a_later_field_is_read(start_service: ServiceFactory,
                                                                             redis_url: str) -> None:
    """The refusal is of elements past the end only: a build before a field with a default was added
    (here a reservation's last, ``ttl_default``) wrote records without it, and this build reads them."""
    r, record = await _snapshot_of_r1(start_service, redis_url, ttl_seconds=60)
    assert record[1][1][0][-1] is False  # ttl_default (the ttl was given), the reservation's last field
    record[1][1][0].pop()
    r.set("atp:{g0}:snap", msgspec.msgpack.encode(record))
    _, again = await start_service(shards=1)
    (a,) = await again.availability([("A", "DC")])
    assert (a.on_hand, a.reserved) == (5, 2)
    replay = await again.reserve("r1", [("A", "DC", 2)], ttl_seconds=60)
    assert replay.replayed  # the same request as the one the older build recorded (R5)


@pytest.mark.parametrize("columns", ["a wide column more", "a narrow column fewer", "fewer names"])
async def test_a_snapshot_with_other_columns_is_refused_at_start_not_restored_in_part(
        start_service: ServiceFactory, redis_url: str, columns: str) -> None:
    """The columns are lists and byte strings, which decoding takes at any count and length: a
    snapshot of a build with a column more (its checksum whole) crashed the restore half-way with
    numpy's IndexError (a traceback, exit status 1, for ever); one with a column fewer, or a
    shorter table of the names its columns point into, was served as zeros and names lost (E10).
    Each is now a refused start naming the snapshot (StartupError: exit status 2)."""
    from atp_service.app.keyspace import StartupError
    from atp_service.storage.records import sealed_snapshot

    r, record = await _snapshot_of_r1(start_service, redis_url)
    store = record[1][0]  # skus, locations, tail, garbage, wide, narrow, col, starts, lengths, caps, names
    if columns == "a wide column more":
        store[4].append(bytes(len(store[4][0])))
    elif columns == "a narrow column fewer":
        store[5].pop()
    else:
        store[10] = store[10][:1]
    r.set("atp:{g0}:snap", sealed_snapshot(msgspec.msgpack.encode(record)))
    with pytest.raises(StartupError, match=r"shard 0: the snapshot at atp:\{g0\}:snap is not in this version's "
                                           r"layout .*start the version that wrote it"):
        await start_service(shards=1)


def _newer_entry(entry: list[Any], change: str) -> list[Any]:
    """``entry`` (a log entry: [ts, events]) as a newer build might write it."""
    ts, events = entry
    if change == "unknown event":
        return [ts, [*events, ["z", "an event of a newer build"]]]
    if change == "event field":
        return [ts, [[*events[0], NEWER], *events[1:]]]
    if change == "fact field":  # FactApplied's fact
        return [ts, [[tag, [*fact, NEWER]] if tag == "f" else [tag, fact, *rest] for tag, fact, *rest in events]]
    assert change == "entry field", change
    return [ts, events, NEWER]


@pytest.mark.parametrize("change", ["unknown event", "event field", "fact field", "entry field"])
async def test_a_log_entry_a_newer_build_wrote_is_refused_at_start_naming_it(
        start_service: ServiceFactory, redis_url: str, change: str) -> None:
    """An event this build does not know crashed the start with msgspec's ValidationError and a
    traceback (exit status 1: restarted, and crashed again, for ever); a field added at the end was
    dropped and the shard served on without it. Both are now a refused start (StartupError: exit
    status 2) naming the shard, the entry, and what to do."""
    from atp_service.app.keyspace import StartupError

    _, client = await start_service(shards=1)  # left running: a stop's final snapshot would cover the log
    await client.record_events([receipt("e1", "A", "DC", 5)])
    r = redis.Redis.from_url(redis_url)
    entries = r.xrange("atp:{g0}:log")
    assert not r.exists("atp:{g0}:snap") and entries
    last_id, fields = entries[-1]
    seq = int(last_id.split(b"-")[0])
    r.xadd("atp:{g0}:log", {b"e": msgspec.msgpack.encode(_newer_entry(msgspec.msgpack.decode(fields[b"e"]), change))},
           id=f"{seq + 1}-0")
    with pytest.raises(StartupError, match=rf"shard 0: entry {seq + 1} of its log atp:\{{g0\}}:log is not in this "
                                           r"version's layout .*start the version that wrote it"):
        await start_service(shards=1)
