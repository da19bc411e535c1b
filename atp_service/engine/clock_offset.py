"""How far this process's service clock is from Redis's: the skew an operator must see.

Each process stamps commands with its own clock (R6); a group taken over from another process counts
on from what that process logged (``GroupClock``), so holds granted there expire early, or late, by
however far the two clocks disagree. NTP keeps that to milliseconds; a host whose time source failed
can be off by minutes, and nothing else shows it. Every process compares its clock with the same
reference, Redis's ``TIME``: the difference between two processes' offsets is their skew.
"""

from __future__ import annotations

import time
from typing import Any

from atp_service.engine.clock import Clock

__all__ = ["CLOCK_OFFSET_EVERY_S", "clock_offset_s"]

CLOCK_OFFSET_EVERY_S = 10.0
"""How often housekeeping measures the offset (one ``TIME`` round trip, off the shards' turns)."""


async def clock_offset_s(client: Any, clock: Clock) -> float:
    """This process's clock less Redis's, in seconds, read halfway through the round trip (its error is
    at most half the round trip). On a Redis Cluster ``TIME`` goes to one node, whose clock is NTP's too."""
    before = clock.now_ms()
    started = time.monotonic()
    seconds, micros = await client.time()
    middle = before + (time.monotonic() - started) * 500  # ms: half the round trip
    return (middle - (int(seconds) * 1000 + int(micros) / 1000)) / 1000
