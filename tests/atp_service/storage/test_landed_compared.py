"""R7: a settle reads what landed after it fenced the shard, and compares it byte for byte with what it
sent. An entry another writer added at the number of one in doubt (its owner check passed: Redis lost a
claim, or a writer holding this instance's epoch and fence) is never taken for a late landing of the
shard's own — the shard stops instead (``LogDiverged``) and its restart serves what the log holds —, nor
is an entry past the last one the shard sent left unread.
"""

from __future__ import annotations

from typing import Any

import pytest

from atp_service.storage.durability import LogDiverged, landed_of
from atp_service.storage.log import LogStore


def _other_writer(store: LogStore) -> LogStore:
    """A writer holding this instance's epoch and fence: every owner check passes it."""
    other = LogStore(store.client, "t:", pipeline_max=64)
    other.epochs, other._tokens = dict(store.epochs), dict(store._tokens)
    return other


async def test_an_entry_of_other_bytes_where_one_in_doubt_was_sent_is_never_taken_for_its_landing_R7(
        store: LogStore) -> None:
    await store.submit(0, 1, b"one")
    await _other_writer(store).submit(0, 2, b"theirs")
    doubt: Any = [(2, None, b"ours")]
    with pytest.raises(LogDiverged, match="entry 2 in the log is not the one this shard sent"):
        await landed_of(store, 0, 1, doubt)


async def test_an_entry_past_the_last_one_in_doubt_is_never_left_unread_R7(store: LogStore) -> None:
    await store.submit(0, 1, b"one")
    await store.submit(0, 2, b"ours")  # landed, its answer lost
    await _other_writer(store).submit(0, 3, b"theirs")
    doubt: Any = [(2, None, b"ours")]
    with pytest.raises(LogDiverged, match=r"entries \[3\] this shard never sent"):
        await landed_of(store, 0, 1, doubt)
