"""A destination refusing every update (a schema changed under the publisher): each batch is sent in
halves down to single updates, and the log says so once, not once per part. Pure logic: ``in_halves``
with a fake destination and a fake clock."""

from __future__ import annotations

import logging

import pytest

from atp_service.logs import EveryInterval
from publishers import DeliveryError
from publishers._delivery import in_halves
from reservation import ChannelUpdate
from tests.publishers.test_publisher import update


async def _refuses_everything(part: list[ChannelUpdate]) -> None:
    raise DeliveryError("HTTP 400: unknown field", retryable=False, splittable=True)


def _split_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "publishers._delivery"]


async def test_a_batch_refused_whole_down_to_single_updates_is_said_once_not_per_part(
        caplog: pytest.LogCaptureFixture) -> None:
    """A batch of 64 refused at every depth: 63 WARNING lines, one per part refused, so a destination
    refusing everything wrote a line per update delivered (thousands a minute). Now one line a second,
    the next carrying in ``left_out`` how many batches split since were left out; every update is still
    refused alone (dead-lettered with its reason)."""
    now = [0.0]
    lines = EveryInterval(1.0, lambda: now[0])
    batch = [update(f"sku-{n}", 1, n) for n in range(1, 65)]
    with caplog.at_level(logging.WARNING, logger="publishers._delivery"):
        refused = await in_halves("web", batch, _refuses_everything, lines=lines)
        assert [r.update for r in refused] == batch  # each refused alone, in order
        assert len(_split_lines(caplog)) == 1
        first = _split_lines(caplog)[0]
        assert (first.event, first.channel, first.updates) == ("publisher_batch_split", "web", 64)  # type: ignore[attr-defined]
        for _ in range(3):  # the same second: counted, left out
            await in_halves("web", batch, _refuses_everything, lines=lines)
        assert len(_split_lines(caplog)) == 1
        now[0] = 1.0
        await in_halves("web", batch, _refuses_everything, lines=lines)
    said = _split_lines(caplog)
    assert len(said) == 2
    assert said[1].left_out == 3  # type: ignore[attr-defined]
