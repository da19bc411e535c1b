"""A recovery whose group another instance takes over while its reads are under way (R7): what the newer owner
writes meanwhile lands between the recovery's reads, and the reads then add up to no state the log ever held. That
is not Redis losing data: the recovery ends ``Fenced``, never one of the refusals an operator must act on
(``recovery.UNRECOVERABLE``: an ERROR, a group counted unrecoverable, a start exiting 2)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from atp_service.engine.recovery import UNRECOVERABLE, LogGone, recover_shard
from atp_service.storage.log import Fenced, LogStore, connect
from reservation import Limits, LogEntry, encode_entry

ENTRY = encode_entry(LogEntry(ts=1_700_000_000_000, events=[]))


@pytest.fixture
async def stores(redis_url: str) -> AsyncIterator[tuple[LogStore, LogStore]]:
    """The older instance's store (its claim made first) and the newer one's, on a clean keyspace."""
    older_client, newer_client = connect(redis_url, 5.0), connect(redis_url, 5.0)
    await older_client.flushall()
    older, newer = LogStore(older_client, "t:", pipeline_max=64), LogStore(newer_client, "t:", pipeline_max=64)
    try:
        yield older, newer
    finally:
        await older_client.aclose()
        await newer_client.aclose()


def after_the_log_read(store: LogStore, meanwhile: Callable[[], Awaitable[None]]) -> None:
    """``meanwhile`` run once, as the first read of ``store``'s log has been answered and before the recovery
    goes on (a process paused there: a GC pause, a VM stalled; or its answer delayed on the way)."""
    read, ran = store.client.xrange, False

    async def xrange(*args: Any, **kwargs: Any) -> Any:
        nonlocal ran
        rows = await read(*args, **kwargs)
        if not ran:
            ran = True
            await meanwhile()
        return rows

    store.client.xrange = xrange  # type: ignore[method-assign]


async def test_a_log_begun_by_the_newer_owner_after_the_read_is_no_lost_log(
        stores: tuple[LogStore, LogStore]) -> None:
    """The older instance read no log (nothing written yet); the newer one claimed the group and appended its
    entry 1 (the log-begun mark with it) before the older one asked whether the log had been begun: the recovery
    raised ``LogGone`` — "entries acknowledged as durable are missing … restore Redis from a backup"."""
    older, newer = stores
    await older.claim(1)

    async def taken_over() -> None:
        await newer.claim(1)
        await newer.submit(0, 1, ENTRY)

    after_the_log_read(older, taken_over)
    with pytest.raises(Fenced):
        await recover_shard(older, 0, Limits())


async def test_a_log_grown_and_trimmed_by_the_newer_owner_meanwhile_is_no_hole(
        stores: tuple[LogStore, LogStore]) -> None:
    """The older instance read the log's first page; the newer one then trimmed it (as its snapshot would) and
    appended: the next page starts past an entry never read (``LogHole``), and the log's end moved (``LogCutShort``
    where it is read again). Any refusal for its data there is a false alarm: the group is not the older
    instance's to judge."""
    older, newer = stores
    await older.claim(1)
    for seq in (1, 2):
        await older.submit(0, seq, ENTRY)

    async def taken_over() -> None:
        await newer.claim(1)
        await newer.client.xtrim(newer.keys.log(0), minid="3-0")  # as a snapshot at 2 would leave it
        await newer.client.xadd(newer.keys.log(0), {"e": ENTRY}, id="3-0")

    after_the_log_read(older, taken_over)
    with pytest.raises(Exception) as raised:
        await recover_shard(older, 0, Limits())
    assert not isinstance(raised.value, UNRECOVERABLE), repr(raised.value)
    assert isinstance(raised.value, Fenced), repr(raised.value)


async def test_a_log_lost_with_its_owner_key_is_still_refused_for_its_data(stores: tuple[LogStore, LogStore]) -> None:
    """Every taking writes its owner key before it recovers: an owner key missing during a recovery is Redis
    having lost it (evicted, an older copy of the data), never a newer owner — the log lost with it is refused
    (``LogGone``: an operator must act), not passed off as a group taken over."""
    older, _ = stores
    await older.claim(1)
    await older.submit(0, 1, ENTRY)
    await older.client.delete(older.keys.log(0), older.keys.owner(0))
    with pytest.raises(LogGone):
        await recover_shard(older, 0, Limits())
