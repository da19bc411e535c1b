"""What a publisher says of keys delivered at versions Redis lost stays readable while the finding repeats: a holder
behind the stream's trimming finds a gap at every read and compares (and finds) the same keys again each time. Real
redis-server; ``LostNames`` and ``Comparison`` driven directly, with a clock of the test's."""

from __future__ import annotations

import logging

import pytest

from atp_service.storage.channel_store import ChannelStore
from publishers import PublisherMetrics
from publishers._compare import Comparison
from publishers._restamp import REFUSED_LOG_S, LostNames
from tests.publishers.test_publisher import config

FOUND = "keys were delivered at versions Redis has since lost"


def _said(caplog: pytest.LogCaptureFixture, text: str, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage() and r.levelno == level]


async def test_keys_found_delivered_at_lost_versions_again_and_again_are_warned_of_once_a_minute_C4(
        store: ChannelStore, caplog: pytest.LogCaptureFixture) -> None:
    """Defect: the warning was written at every finding, one line per read while the holder was behind."""
    caplog.set_level(logging.WARNING, logger="publishers")
    now = [0.0]
    names = LostNames(config(channel="web", group="g"), store.client, PublisherMetrics(), clock=lambda: now[0])
    for _ in range(5):
        await names.owe({"a\t": 3})
    assert len(_said(caplog, FOUND)) == 1
    now[0] += REFUSED_LOG_S
    await names.owe({"a\t": 3})
    assert len(lines := _said(caplog, FOUND)) == 2 and "4 such lines left out" in lines[-1], lines
    named = await store.client.hgetall(config(channel="web", group="g").restamp_key)
    assert named == {b"a\t": b"3"}, "every finding named all the same"


async def test_a_comparison_started_again_while_under_way_is_said_once(
        store: ChannelStore, caplog: pytest.LogCaptureFixture) -> None:
    """Defect: each gap's start was logged at INFO, one line per read for a holder behind the trimming."""
    caplog.set_level(logging.INFO, logger="publishers")
    cfg = config(channel="web", group="g")
    names = LostNames(cfg, store.client, PublisherMetrics())
    comparison = Comparison(cfg, store.client, names, PublisherMetrics(), lambda: {"a\t": 3, "b\t": 4})
    for n in range(3):
        comparison.start("holder", f"gap {n}")
    assert len(_said(caplog, "comparing the versions", logging.INFO)) == 1
    assert comparison.under_way
    await comparison.step()  # both keys compared (fewer than a step's worth): over
    assert not comparison.under_way
    comparison.start("holder", "a later gap")
    assert len(_said(caplog, "comparing the versions", logging.INFO)) == 2, "a new comparison said again"
