"""A consumer group made again (after XGROUP DESTROY) by a script whose answer was lost — Redis made the group, before
the entry the reader held unacknowledged, but the reader never heard — then deleted again before that entry came
again. Real redis-server; the service's reading loop stopped and its reader driven by hand, its desk refusing the
held fact (its entry left pending, as a shard that does not answer leaves it)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_service.intake import again
from atp_service.tasks import cancel_and_wait
from tests.atp_service.fact_helpers import F
from tests.atp_service.intake.test_group_lost_pending import STREAM, Refusing
from tests.conftest import ServiceFactory
from tests.waiting import until


async def test_an_entry_held_when_a_group_made_again_went_unanswered_comes_again_after_the_next_deletion(
        start_service: ServiceFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect: ``held`` was refused (pending, to be read again) when the group was deleted; the reader made it again
    before ``held``, the script's answer lost, so its newest entry read stayed ``held``. A pass over its own pending
    list — empty in the new group — read through, and let go of the bound that kept ``held``; the group deleted
    again then, it was made after ``held``: never read again, no dead letter, nothing pending (E6: every entry
    applied, quarantined or dead-lettered)."""
    now = int(time.time() * 1000)
    r: Any = redis.Redis.from_url(redis_url)
    service, _ = await start_service()
    reader = service.ingestor
    assert reader is not None
    desk = Refusing.installed(service, released=True)
    held = r.xadd(STREAM, F("held", "RECEIPT", "A", "S1", 4, now - 100).fields())
    await until(lambda: desk.calls >= 1 and r.xpending(STREAM, "atp")["pending"] == 1 and not reader._batches,
                "held refused, pending")
    await cancel_and_wait(reader.task)  # the reader driven by hand from here
    r.xgroup_destroy(STREAM, "atp")
    made_again = again.make_group_marked

    async def answer_lost(*args: Any) -> Any:  # the script run, its answer lost
        await made_again(*args)
        raise RedisTimeoutError("Timeout reading from socket")

    monkeypatch.setattr(again, "make_group_marked", answer_lost)
    with pytest.raises(RedisTimeoutError):
        await reader._create_groups(again=True)
    monkeypatch.setattr(again, "make_group_marked", made_again)
    assert [g["name"] for g in r.xinfo_groups(STREAM)] == [b"atp"], "Redis made the group (its answer lost)"
    await reader._retry_pending()  # its own pending entries: none in the group made again
    r.xgroup_destroy(STREAM, "atp")
    await reader._create_groups(again=True)
    desk.refuse = False
    read = await reader._read(None, block=None)
    assert held in [entry_id for _, entry_id, _ in read], "held never read again: its group made again after it"
