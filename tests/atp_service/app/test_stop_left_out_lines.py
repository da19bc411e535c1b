"""The rate-limited lines left out since the last one written are said at the stop (``log_lines_left_out``): each
count was carried into the next line of its kind, and a process that stopped first never said it — the operator
read of one failure where there were a thousand."""

from __future__ import annotations

import logging

import pytest

from atp_service import AtpService
from atp_service.edge.ratelog import RateLimitedLog
from atp_service.logs import EveryInterval, noted_now_and_then, say_left_out
from tests.atp_service.app.test_stop_every_step import shut_down_here
from tests.conftest import test_config as make_config


def _said(caplog: pytest.LogCaptureFixture, *of: str) -> list[tuple[str, str, int]]:
    return [(record.name, record.of, record.left_out) for record in caplog.records  # type: ignore[attr-defined]
            if getattr(record, "event", None) == "log_lines_left_out" and getattr(record, "of", None) in of]


def test_each_limiter_with_lines_left_out_says_its_count_once(caplog: pytest.LogCaptureFixture) -> None:
    say_left_out()  # what earlier tests of this process left out, said before
    caplog.set_level(logging.WARNING)
    now = [0.0]
    every = EveryInterval(10.0, lambda: now[0])
    for _ in range(4):  # the first said, three left out
        every.fields(event="t_every_failed", shard=1)
    none_left = EveryInterval(10.0, lambda: now[0])
    none_left.fields(event="t_none_left")
    audit = logging.getLogger("t.audit")
    limited = RateLimitedLog(audit, logging.WARNING, burst=1, clock=lambda: now[0])
    for _ in range(3):
        limited.log("denied", event="t_denied", rpc="Reserve")
    failures: list[BaseException] = []
    unsaid = noted_now_and_then(lambda exc, _: failures.append(exc), 10.0, clock=lambda: now[0])
    for _ in range(3):  # its count said by no line: not at the stop either
        unsaid(RuntimeError("x"), 1.0)
    assert len(failures) == 1
    say_left_out()
    assert _said(caplog, "t_every_failed", "t_none_left", "t_denied") == [  # was: []
        ("t.audit", "t_denied", 2), ("atp_service.logs", "t_every_failed", 3)]
    caplog.clear()
    say_left_out()
    assert _said(caplog, "t_every_failed", "t_denied") == []  # said once
    now[0] += 10.0
    assert every.fields(event="t_every_failed", shard=1) == {"event": "t_every_failed", "shard": 1}


async def test_a_serving_process_s_stop_says_the_lines_left_out(
        redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """``atp-service serve``'s stop (``shutdown.shut_down``): an ``expiry_deferred`` said, three more left out."""
    service = AtpService(make_config(), redis_url)
    await service.start()
    assert service.engine is not None
    housekeeper = service.engine._housekeeper
    say_left_out()  # what earlier tests of this process left out, said before
    for _ in range(4):
        housekeeper._deferred(TimeoutError("a part's Redis away"), "r1", 1)
    caplog.set_level(logging.WARNING)
    assert await shut_down_here(service) == 0
    assert _said(caplog, "expiry_deferred") == [("atp_service.logs", "expiry_deferred", 3)]  # was: []
