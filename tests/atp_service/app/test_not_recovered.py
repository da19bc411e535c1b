"""What a failed taking says (``handing.NotRecovered``): every process takes a group whose recovery fails
alike again at each balance pass (a third of a lease), and each taking was said — one damaged snapshot filled
every process's log with an ERROR and its traceback every few seconds. Once per group per interval now, the
line counting the takings left unsaid since."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_service.app.handing import NotRecovered
from atp_service.metrics import MembershipMetrics
from atp_service.storage.log import Fenced
from atp_service.storage.records import SnapshotUnreadable

LOG = logging.getLogger("atp_service.app.membership")


def test_a_group_failing_at_every_taking_is_said_once_an_interval_with_the_takings_left_unsaid(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    metrics = MembershipMetrics()
    said = NotRecovered(LOG, metrics.recoveries_failed, interval_s=60.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="atp_service")
    damaged = SnapshotUnreadable("shard 3: its checksum fails")
    for _ in range(20):  # a pass every 2 s for 38 s
        said.say(3, damaged)
        now[0] += 2.0
    said.say(4, RedisTimeoutError("Timeout reading from socket"))  # another group: its own line at once
    now[0] = 61.0
    said.say(3, damaged)
    lines = [(r.levelno, getattr(r, "group", None), getattr(r, "left_out", None)) for r in caplog.records]
    assert lines == [(logging.ERROR, 3, 0), (logging.WARNING, 4, 0), (logging.ERROR, 3, 19)]
    assert caplog.records[0].exc_info is not None and "checksum" in caplog.text
    assert "19 more such takings" in caplog.records[2].getMessage()
    counted = {r: metrics.recoveries_failed.labels(r).value for r in ("data", "redis", "bug")}
    assert counted == {"data": 21, "redis": 1, "bug": 0}  # every taking counted, said or not


def test_a_stop_cancelling_a_recovery_is_said_each_time_as_nothing_gone_wrong(
        caplog: pytest.LogCaptureFixture) -> None:
    said = NotRecovered(LOG, MembershipMetrics().recoveries_failed, clock=lambda: 0.0)
    caplog.set_level(logging.INFO, logger="atp_service")
    said.say(1, asyncio.CancelledError())
    said.say(1, asyncio.CancelledError())
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.INFO]


def test_a_taking_another_process_won_while_it_recovered_is_a_warning_and_no_failure(
        caplog: pytest.LogCaptureFixture) -> None:
    """A recovery whose group a newer taking won meanwhile ends ``Fenced`` (``recovery._judged``): the group is
    served by that process, nothing is wrong with its data or with Redis. Said at ERROR ("taken but not
    recovered", with the traceback of a ``LogGone``) and counted as a failed recovery, it paged an operator."""
    metrics = MembershipMetrics()
    said = NotRecovered(LOG, metrics.recoveries_failed, clock=lambda: 0.0)
    caplog.set_level(logging.INFO, logger="atp_service")
    said.say(0, Fenced("shard 0: taken over by a newer owner while it was recovered"))
    assert [(r.levelno, getattr(r, "event", None), getattr(r, "group", None)) for r in caplog.records] == [
        (logging.WARNING, "group_lost_in_recovery", 0)]
    assert {r: metrics.recoveries_failed.labels(r).value for r in ("data", "redis", "bug")} == {
        "data": 0, "redis": 0, "bug": 0}
