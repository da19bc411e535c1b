"""``scale.py``'s check after a step: every position read at its owner against what the load generators were told.

A position may hold no fewer units than were acknowledged held there (R1) and those of the calls in doubt
(R7: failed with no definite answer) that are known to have landed, and no more than the acknowledged ones and
every call in doubt. Which calls in doubt landed is read by their reservation ids before any position is read
(``landed``): a hold landed stays held (an hour's TTL), so a position holding fewer than both has lost one. Counted
per position alone, a call in doubt that landed hid an acknowledged hold lost at its position (a unit each).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from atp_client import NotFound, Retryable, RoutedClient
from atp_client.pb.atp.v1 import atp_pb2 as pb

T = TypeVar("T")
Position = tuple[str, str]
READS_AT_ONCE = 64
"""Reservations in doubt read at once (``landed``)."""


async def check(addresses: tuple[str, ...], keys: list[Position], acked: Counter[Position],
                in_doubt: dict[str, Position]) -> dict[str, int]:
    """Units beyond on hand (``oversold``), and positions whose units held are fewer than acknowledged held
    and landed in doubt (``holds_lost`` too), or more than those acknowledged and every unit in doubt
    (``hold_mismatches``); the units held of calls in doubt (``in_doubt_held``: beyond those acknowledged).
    ``in_doubt``: each call's reservation id in doubt, and its position (one unit)."""
    oversold = mismatches = lost = landed_units = 0
    doubted = Counter(in_doubt.values())
    async with RoutedClient(addresses, timeout_s=30) as client:
        landed = await _landed(client, in_doubt)  # before the positions: what landed before they are read
        for i in range(0, len(keys), 1000):
            for p in await patiently(lambda i=i: client.availability(keys[i:i + 1000])):  # type: ignore[misc]
                oversold += max(0, p.reserved + p.committed - p.on_hand)
                held, position = acked[(p.sku, p.location)], (p.sku, p.location)
                least = held + landed[position]
                mismatches += not least <= p.reserved <= held + doubted[position]
                lost += p.reserved < least
                landed_units += max(0, p.reserved - held)
    return {"checked_positions": len(keys), "oversold": oversold, "hold_mismatches": mismatches,
            "holds_lost": lost, "in_doubt_held": landed_units}


async def _landed(client: RoutedClient, in_doubt: dict[str, Position]) -> Counter[Position]:
    """Per position, the calls in doubt whose reservations are held (read by id; NOT_FOUND: not landed, yet)."""
    landed: Counter[Position] = Counter()
    ids = iter(in_doubt.items())

    async def reader() -> None:
        for rid, position in ids:
            try:
                got = await patiently(lambda rid=rid: client.get_reservation(rid))  # type: ignore[misc]
            except NotFound:
                continue
            landed[position] += got.state == pb.RESERVATION_STATE_HELD

    await asyncio.gather(*(reader() for _ in range(READS_AT_ONCE)))
    return landed


async def patiently(call: Callable[[], Awaitable[T]], limit_s: float = 60.0) -> T:
    """``call``, waiting out a group being taken over (a lease lost under load) for up to ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            return await call()
        except Retryable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def merged(maps: Iterable[dict[str, Position]]) -> dict[str, Position]:
    """The generators' calls in doubt, together (their reservation ids are each generator's own)."""
    out: dict[str, Position] = {}
    for doubted in maps:
        out.update(doubted)
    return out


__all__ = ["check", "merged", "patiently"]
