"""``OwnerWatch.answer`` (pure): a forwarded call ended by the routes, or whose send was cancelled under it."""

from __future__ import annotations

import asyncio

import pytest

from atp_service.edge.owner_watch import OwnerLost, OwnerWatch
from reservation import Reason


async def test_a_send_cancelled_under_the_call_is_answered_in_doubt_not_an_internal_error() -> None:
    """gRPC ends a call ``CancelledError`` when its channel is closed under it (a stop): the caller was answered an
    InvalidStateError (INTERNAL) read from the watch's future, never set. A change is in doubt (R7)."""
    async def send() -> bytes:
        raise asyncio.CancelledError

    watch = OwnerWatch()
    with pytest.raises(OwnerLost) as lost:
        await watch.answer(send(), 3, "10.0.0.9:50051", change=True)
    assert lost.value.refusal.reason == Reason.OUTCOME_UNKNOWN
    assert len(watch) == 0
