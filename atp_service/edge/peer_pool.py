"""The channels a process keeps open to the other processes of its keyspace (``edge.forward``): one per
peer address, pooled, and never closed under a call in flight on it.

Every use of a channel is counted for as long as its call runs — a forwarded call, an owner's
``ReserveStream`` for as long as the stream lasts, a fact send, an order's step. A channel dropped from the
pool with calls in flight is closed once its last call has ended; one with none is dropped first. Closed at
once with a grace (5 s), a call still in its owner's hands past it was cancelled: a Reserve forwarded there
was never answered (the caller ran out its deadline, in doubt) while the owner made it, an outbound
``ReserveStream``'s items in flight were told ``OUTCOME_UNKNOWN`` — for no fault of anyone (R7)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from atp_service.tasks import keep
from reservation import Reason, Unavailable

MAX_PEERS = 64
"""Channels kept open to peer processes for the next call; past it the least recently used one with no
call in flight is closed (one with calls in flight, when every one has, leaves the pool and is closed once
its last call ends)."""
MAX_PEER_CHANNELS = 2 * MAX_PEERS
"""Channels open to peer processes at most: the pool's and those that left it with calls in flight. Past
it a call that needs one more is refused ``SERVICE_OVERLOADED`` (metadata ``limit``: ``max_peer_channels``),
nothing sent: retried, it finds a channel once a call on one has ended."""
PEER_CLOSE_GRACE_S = 5.0
"""At the stop, the calls on the peer channels are let finish this long (none is forwarded any more)."""


class PeerChannels:
    """One channel per peer address (``connect`` opens one), ``max_peers`` kept in the pool and at most
    ``max_open`` open in all; a channel is closed only once no call is in flight on it (``using``, ``taken``)."""

    def __init__(self, connect: Callable[[str], grpc.aio.Channel], max_peers: int = MAX_PEERS,
                 max_open: int | None = None) -> None:
        self._connect = connect
        self._max_peers = max_peers
        self._max_open = 2 * max_peers if max_open is None else max(max_open, max_peers)
        self._pool: OrderedDict[str, grpc.aio.Channel] = OrderedDict()
        self._in_flight: dict[grpc.aio.Channel, int] = {}
        """Calls in flight on each channel (none: not a key)."""
        self._leaving: set[grpc.aio.Channel] = set()
        """Channels dropped from the pool with calls in flight: each closed once its last call ends."""
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def peers(self) -> list[str]:
        """The addresses a pooled channel is open to, least recently used first."""
        return list(self._pool)

    @property
    def open(self) -> int:
        """Channels open (being closed excepted): the pool's, and those left with calls in flight."""
        return len(self._pool) + len(self._leaving)

    @contextmanager
    def using(self, address: str) -> Iterator[grpc.aio.Channel]:
        """The channel to ``address``, counted in use until the block ends (the call made in it has)."""
        channel, done = self.taken(address)
        try:
            yield channel
        finally:
            done()

    def taken(self, address: str) -> tuple[grpc.aio.Channel, Callable[[], None]]:
        """The channel to ``address``, counted in use until the function returned with it is called (once:
        a call that outlives its caller's block, an outbound stream, calls it as it ends). Raises
        ``Unavailable`` once ``aclose`` began, or past ``max_open`` channels all in use."""
        channel = self._channel(address)
        self._in_flight[channel] = self._in_flight.get(channel, 0) + 1
        ended = False

        def done() -> None:
            nonlocal ended
            if ended:
                return
            ended = True
            left = self._in_flight.pop(channel) - 1
            if left:
                self._in_flight[channel] = left
            elif channel in self._leaving:
                self._leaving.discard(channel)
                keep(self._closing, channel.close(None))

        return channel, done

    def _channel(self, address: str) -> grpc.aio.Channel:
        if self._closed:  # a saga still running during a stop would open a channel nothing closes
            raise Unavailable("this process is stopping: nothing more goes to other processes", Reason.SHUTTING_DOWN)
        channel = self._pool.get(address)
        if channel is not None:
            self._pool.move_to_end(address)
            return channel
        if len(self._pool) >= self._max_peers:
            self._make_room()
        channel = self._pool[address] = self._connect(address)
        return channel

    def _make_room(self) -> None:
        """One channel out of the full pool: the least recently used with no call in flight, closed now;
        when every one has calls in flight, the least recently used, closed once they have ended."""
        idle = next((a for a, c in self._pool.items() if c not in self._in_flight), None)
        if idle is not None:
            keep(self._closing, self._pool.pop(idle).close(None))
            return
        if self.open >= self._max_open:
            raise Unavailable(f"{self.open} channels to other processes have calls in flight (max_peer_channels): "
                              "nothing was sent; retry after the delay", Reason.SERVICE_OVERLOADED,
                              metadata={"limit": "max_peer_channels"})
        _, busy = self._pool.popitem(last=False)
        self._leaving.add(busy)

    async def aclose(self, grace_s: float = PEER_CLOSE_GRACE_S) -> None:
        """Close every channel, those that left the pool with calls in flight too (the calls on them are let
        finish within ``grace_s``); none is opened any more."""
        self._closed = True
        channels: list[Any] = [*self._pool.values(), *self._leaving]
        self._pool.clear()
        self._leaving.clear()
        await asyncio.gather(*(channel.close(grace_s) for channel in channels), *self._closing)
