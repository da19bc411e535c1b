"""An owner that does not answer (paused) is skipped once a send to it failed, and tried again by one send
alone (``OwnerSends``) "so a paused owner does not hold up the facts of the others". When that one send
is the reader's pass over its own pending entries — the only sender while no new entry names the owner —
the pass waits for it inline, in the reading loop: no new entry is read until the send times out (5 s),
and again at every try (every 5 s at most): the facts of every other group wait with it."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from atp_service import AtpService
from atp_service.edge import record
from atp_service.intake.owners import OwnerSends
from tests.atp_service.app.test_processes import SHARDS, group_of, owned
from tests.atp_service.app.test_processes_streams import STREAMS, on_hand, spawn_owner, start_leased, stream_state
from tests.atp_service.fact_helpers import F, wait_consumed
from tests.conftest import ServiceFactory
from tests.ports import held_port
from tests.waiting import until

__all__ = ["start_leased"]  # the fixture, used here


async def reader_and_owner(start_leased: ServiceFactory, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                           ) -> tuple[AtpService, OwnerSends, subprocess.Popen[bytes], str]:
    """A leased reader and another process (its own, to be paused with SIGSTOP) owning half the groups, a send
    to it failing after 1 s: (the reader, its sends to owners, the other process, that one's address)."""
    monkeypatch.setattr(record, "SEND_TIMEOUT_S", 1.0)  # the first send fails soon: the owner then skipped
    reader, _ = await start_leased(port=held_port(), host="127.0.0.1")
    membership, ingestor = reader.membership, reader.ingestor
    assert membership is not None and ingestor is not None and ingestor._owners is not None
    port = held_port()
    owner = spawn_owner(redis_url, port, tmp_path / "owner.log", lease_ms=60_000)
    elsewhere = f"127.0.0.1:{port}"
    await until(lambda: sum(membership.where(g)[0] == elsewhere for g in range(SHARDS)) == SHARDS // 2
                and len(owned(reader)) == SHARDS // 2, "the groups shared with the other process", 60)
    return reader, ingestor._owners, owner, elsewhere


async def test_a_try_of_a_paused_owner_by_the_pending_pass_holds_up_no_reading(
        start_leased: ServiceFactory, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reader, sends, owner, elsewhere = await reader_and_owner(start_leased, redis_url, tmp_path, monkeypatch)
    skus = [f"probe-{i}" for i in range(64)]
    here = next(s for s in skus if group_of(s) in owned(reader))
    away = next(s for s in skus if group_of(s) not in owned(reader))
    r = redis.Redis.from_url(redis_url)
    owner.send_signal(signal.SIGSTOP)
    try:
        r.xadd(STREAMS[0], F("away", "RECEIPT", away, "DC", 1, int(time.time() * 1000) - 1000).fields())
        await until(lambda: not sends.due(elsewhere), "the paused owner's send failed: skipped")
        # From now on a send to it waits far longer than the bound below: the one that tries it again
        # must not hold up the reading. No new entry names it, so that one is the pending pass's.
        monkeypatch.setattr(record, "SEND_TIMEOUT_S", 60.0)
        await until(lambda: (elsewhere, None) in sends._probing, "the paused owner tried again")
        r.xadd(STREAMS[1], F("here", "RECEIPT", here, "DC", 3, int(time.time() * 1000) - 1000).fields())
        await until(lambda: stream_state(r, STREAMS[1]) == (0, 0), "the fact of the reader's own group acknowledged",
                    15)
        assert await on_hand(reader, here) == 3
    finally:
        owner.send_signal(signal.SIGCONT)
    await wait_consumed(redis_url, list(STREAMS), timeout_s=90)
