"""A holder's comparison with the state hash (``publishers/_compare.py``) that fails never holds its delivery up:
the naming is an aid to convergence, never a step of delivery (C4)."""

from __future__ import annotations

import logging

import pytest

from atp_service.storage.channel_store import ChannelStore
from atp_service.storage.channel_wire import to_fields
from tests.publishers.test_publisher_holder_names_trimmed import holder_that_delivered_b_at_3, sent
from tests.publishers.test_publisher_lease import Destination
from tests.publishers.test_publisher_trimmed import STREAM, value
from tests.waiting import until


async def test_a_comparison_under_way_does_not_stop_the_holder_while_the_state_hash_holds_another_type(
        store: ChannelStore, caplog: pytest.LogCaptureFixture) -> None:
    """White-box trigger: a comparison under way as the process holds the lease (begun standing by: ``_compare_from``
    after a start with entries trimmed, more than ``SWEEP_KEYS`` keys or its look cancelled by the lease taken), and
    the state hash overwritten by another type (an operator's SET: the desk sets the channel aside, ``aside.py``).
    ``Comparison.step``'s HMGET fails WRONGTYPE before every read: the entries already in the stream (a stock-out)
    are never delivered. Each failed step is now warned of and tried again at the next read."""
    receiver = Destination()
    async with holder_that_delivered_b_at_3(store, receiver) as (publisher, _metrics, _image):
        caplog.set_level(logging.WARNING, logger="publishers")
        # The hash overwritten before the comparison starts: started first, its one step could run whole in the
        # awaits of the overwrite (a busy host), and no step was ever left to fail.
        await store.client.delete(store.state_key("web"))
        await store.client.set(store.state_key("web"), "an operator's mistake")
        publisher._comparison.start("standby", "entries trimmed before this standby looked at them")
        # A step tried and failed before the stock-out is written: it is delivered all the same, after the failure.
        failed = "publisher_restamp_compare_failed"
        await until(lambda: any(getattr(r, "event", None) == failed for r in caplog.records), "a step failed")
        u = value("c", 0, 4)
        await store.client.xadd(STREAM, dict(to_fields(u)), id="4-0")  # written by the desk before the overwrite
        await until(lambda: sent(receiver).get("c") == (0, 4), "the stock-out delivered")
