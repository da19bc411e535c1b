"""How far this process's service clock is from Redis's: the skew an operator must see.

Each process stamps commands with its own clock (R6); a group taken over from another process counts
on from what that process logged (``GroupClock``), so holds granted there expire early, or late, by
however far the two clocks disagree. NTP keeps that to milliseconds; a host whose time source failed
can be off by minutes, and nothing else shows it. Every process compares its clock with the same
reference, Redis's ``TIME``: the difference between two processes' offsets is their skew. A group taken over
counts on from its previous owner's newest stamp, ahead of this process's clock until that passes it: its lead
adds to the offset, and the furthest ahead of them is measured with it (``group_clock_lead_s``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from atp_service.engine.clock import Clock

__all__ = ["CLOCK_OFFSET_EVERY_S", "clock_offset_s", "group_clock_lead_s"]

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


def group_clock_lead_s(clock: Clock, groups: Iterable[Clock]) -> float:
    """How far the furthest ahead of ``groups``' clocks (the shards' own: ``clock`` itself but for the groups taken
    over, ``GroupClock``) runs ahead of the process's ``clock``, in seconds; 0 when none is ahead. Read from the
    clocks alone, with no round trip: one pass over the shards, as housekeeping's own."""
    now = clock.now_ms()
    return max([0, *(group.now_ms() - now for group in set(groups) if group is not clock)]) / 1000
