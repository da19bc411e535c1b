"""The channel desk's passes over everything it knows — every SKU of every shard, every key a
channel shows — at a start and a reload, a slice at a time with a turn of the event loop between.
Over a national estate (millions of positions, per-location channels of millions of keys) one pass
in one go held every shard, call and lease renewal for seconds. Each slice looks at the state as it
is then, and does all it does to a key in that same turn."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from atp_service.channels.curator import skus_per_slice, unheld
from atp_service.channels.estate import Channel
from reservation import Feed, Key, PositionStore

if TYPE_CHECKING:
    from atp_service.engine.router import Engine

T = TypeVar("T")


async def in_slices(items: Sequence[T], size: int, work: Callable[[Sequence[T]], None],
                    between: Callable[[], None] | None = None) -> None:
    """``work`` on ``items``, ``size`` at a time, letting the event loop run other tasks between (after
    ``between``, if given: the channel desk starts a write of what is due there)."""
    for at in range(0, len(items), size):
        if at:
            if between is not None:
                between()
            await asyncio.sleep(0)
        work(items[at:at + size])


async def withdraw_dropped(feed: Feed, channel: Channel, size: int, now: Callable[[], int]) -> None:
    """Every key of ``feed`` that ``channel`` no longer curates shown 0: of a per-location channel, those
    at a location it no longer sells from (a network key too: it was network before); of a network one,
    every per-location key (it was per location before) - nothing would ever correct their numbers (C1)."""
    curated = frozenset(channel.sells_from) if channel.per_location else frozenset({""})
    await in_slices(feed.known_keys(), size, partial(_withdraw_dropped, feed, curated, now))


async def withdraw_unheld(feed: Feed, channel: Channel, engine: Engine, size: int, now: Callable[[], int]) -> None:
    """Every key ``feed`` shows that no position stands behind (``unheld``) shown 0. A network channel's keys are
    looked at as many SKUs a slice as curation takes (``skus_per_slice``): each reads every position of its SKU."""
    step = size if channel.per_location else skus_per_slice((channel,), size)
    await in_slices(feed.known_keys(), step, partial(_withdraw_unheld, feed, channel, engine, now))


def _withdraw_dropped(feed: Feed, allowed: frozenset[str], now: Callable[[], int], keys: Sequence[Key]) -> None:
    _withdraw(feed, [key for key in keys if key[1] not in allowed], now())


def _withdraw_unheld(feed: Feed, channel: Channel, engine: Engine, now: Callable[[], int], keys: Sequence[Key]) -> None:
    _withdraw(feed, unheld(keys, channel, lambda sku: engine.actors[engine.place(sku)].positions(),
                           partial(made_in_flight, engine)), now())


def made_in_flight(engine: Engine, store: PositionStore) -> Collection[Key]:
    """The positions of ``store`` that only batches in flight made: in no durable state yet (C4), read as the slice
    runs (a reload's passes run while shards serve)."""
    for actor in engine.actors:
        if actor.positions() is store:
            ahead = actor.ahead_of_log()
            return () if ahead is None else ahead[1]
    return ()


def _withdraw(feed: Feed, keys: list[Key], now: int) -> None:
    for key in keys:
        feed.withdraw(key, now)
