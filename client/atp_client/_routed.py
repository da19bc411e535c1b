"""``RoutedClient``: each call sent straight to the service process that owns its shard group.

The service may run as several processes on one keyspace. Any process answers any call (it
forwards what it does not own), but a call sent to the owner saves the hop. This client asks a
process for the routing table (``GetRouting``), sends each call to its group's owner with
``atp-routing: redirect``, and follows the ``atp-moved`` redirect a process answers when the group
has moved — asking for the table again, from another process when one does not answer, and
before the next call once an owner it names let a call run out of deadline. Each
call keeps to its deadline (``timeout_s``), hops and table included.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import grpc

from atp_client._channel import RECONNECT_MAX_S, checked_reconnect
from atp_client._client import MAX_REQUEST_BYTES, AtpClient, LineLike, RetryPolicy, _lines, reserve_request
from atp_client._errors import (
    AtpError,
    Conflict,
    InvalidRequest,
    NotFound,
    Retryable,
    deadline_exceeded,
    in_doubt,
    invalid_field,
    renumbered,
)
from atp_client._routed_reads import check_key_count, read_groups
from atp_client._routing import REDIRECT, ROUTING_KEY, Lru, Routes, moved_of
from atp_client._time import checked_timeout
from atp_client.pb.atp.v1 import atp_pb2 as pb

MAX_CLIENTS = 32
"""Service processes a ``RoutedClient`` keeps a channel to; past it the least recently used with no call
in flight is closed (one with calls in flight, dropped when every one has, closes once its last call ends)."""
MAX_REMEMBERED = 100_000
"""Reservation ids whose home group a ``RoutedClient`` remembers (those it reserved, or was answered)."""
MAX_HOPS = 3
"""Redirects (and processes not answering) one call follows before its refusal is raised."""
_REDIRECT = ((ROUTING_KEY, REDIRECT),)
CHANGES = frozenset({"Reserve", "Confirm", "Release", "Fulfill"})
"""The calls that change a reservation: one lost with a process that had it may have been made."""
_NOT_SENT = "failed to connect to all addresses"
"""gRPC's own words for a try it never sent: no connection to the process was made. Proof that the
call was not sent only where gRPC tries once: with its retries on, the try lost mid-way (the process
killed, its connection reset) is sent again, and the last try's "failed to connect" (the process
refusing connections now) hides the first (``AtpClient.connect`` says the same)."""
DECIDED = (Conflict, NotFound)
"""Refusals that decide a change, by the process holding the reservation now: after a try lost with
another process, they say what landed (the service fences a late landing first, R7). Any other
refusal (access, a limit, the table not answered) says nothing of the lost try."""


class RoutedClient:
    """Calls routed to the owner of their shard group, over the service processes sharing a keyspace.

    ``seeds``: one or more process addresses to ask for the routing table; the other arguments are
    ``AtpClient``'s, for the channel to each process (``max_request_bytes`` too). A ``Reserve`` goes to the owner of the
    reservation's home group (the lowest group of its lines); a call naming only a reservation id,
    to the owner of the home group of a reservation this client reserved or was answered about
    (the last ``max_remembered``), else to any process, which forwards it. ``availability`` asks
    each key at its group's owner, one call per group. A refusal of the owner is raised as
    ``AtpClient`` raises it.

    With ``retry``, gRPC retries a ``GROUP_MOVED`` refusal (``UNAVAILABLE``) at the same process
    before this client follows the redirect: each redirect then costs the retries' delays.
    ``timeout_s`` is each call's deadline, for everything it takes: the routing table, the hops
    it follows, gRPC's retries."""

    def __init__(self, seeds: str | Sequence[str], *, timeout_s: float = 10.0,
                 options: Sequence[tuple[str, Any]] = (), token: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None, retry: RetryPolicy | None = None,
                 max_clients: int = MAX_CLIENTS, max_remembered: int = MAX_REMEMBERED,
                 max_request_bytes: int | None = MAX_REQUEST_BYTES, reconnect_max_s: float = RECONNECT_MAX_S) -> None:
        self.seeds = (seeds,) if isinstance(seeds, str) else tuple(seeds)
        if not self.seeds:
            raise ValueError("seeds: at least one service address is required")
        self.timeout_s = checked_timeout(timeout_s)
        # checked here: the channels are made later, on a call, where a bad bound would be a caller's surprise
        self._connect = partial(AtpClient, timeout_s=self.timeout_s, options=options, token=token,
                                credentials=credentials, retry=retry, max_request_bytes=max_request_bytes,
                                reconnect_max_s=checked_reconnect(reconnect_max_s))
        self._tries_once = (retry is None or retry.attempts == 1) and not _service_config_in(options)
        """Whether gRPC's "failed to connect" proves a call unsent (``_NOT_SENT``)."""
        self._clients: Lru[str, AtpClient] = Lru(max_clients)
        self._in_flight: dict[AtpClient, int] = {}
        """Calls in flight on each channel: one with calls is not closed under them."""
        self._draining: set[AtpClient] = set()
        """Channels dropped from the pool with calls in flight: each closed once its last call ends."""
        self._homes: Lru[str, int] = Lru(max_remembered)
        self._routes: Routes | None = None
        self._suspect: tuple[Routes, str] | None = None
        """A table whose owner did not answer a call in time, and that owner: asked again first."""
        self._refreshing = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False
        self._close: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RoutedClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every channel, those dropped from the pool with calls in flight too; the calls on them end
        (gRPC raises ``asyncio.CancelledError`` in them), and a call that would open another (a hop, the
        routing table) raises ``grpc.aio.UsageError``.

        Closes once, in a task of its own that every caller waits for: a caller cancelled (a timeout
        around it) leaves the close running — cancelling a dropped channel's close half-way left it
        "closing" in gRPC, never destroyed, and raised ``CancelledError`` into the other callers."""
        self._closed = True
        if self._close is None:
            clients = [*self._clients.values(), *self._draining]
            self._clients.clear()
            self._draining.clear()
            self._close = asyncio.ensure_future(_closed(clients, self._closing))
            self._close.add_done_callback(_heard)
        await asyncio.shield(self._close)

    @property
    def routes(self) -> Routes | None:
        """The routing table last answered (None before the first call)."""
        return self._routes

    async def refresh(self) -> Routes:
        """Ask for the routing table again, of the seeds and every process the last one named, all at
        once: the first answer is taken."""
        return await self._refresh(self._routes, self._deadline())

    async def reserve(self, reservation_id: str, lines: Iterable[LineLike], *, order_ref: str = "",
                      channel: str = "", ttl_seconds: int = 0, allow_partial: bool = False) -> pb.ReserveResponse:
        lines = list(lines)
        req = reserve_request(reservation_id, lines, order_ref=order_ref, channel=channel, ttl_seconds=ttl_seconds,
                              allow_partial=allow_partial)
        deadline = self._deadline()
        home = (self._routes or await self._refresh(None, deadline)).home(sku for sku, _, _ in lines)
        answer: pb.ReserveResponse = await self._send("Reserve", req, home, deadline)
        if home is not None:
            self._homes.put(reservation_id, home)
        return answer

    async def confirm(self, reservation_id: str) -> pb.Reservation:
        return await self._by_id("Confirm", pb.ConfirmRequest(reservation_id=reservation_id))

    async def release(self, reservation_id: str, lines: Iterable[LineLike] = (),
                      operation_id: str = "") -> pb.Reservation:
        req = pb.ReleaseRequest(reservation_id=reservation_id, lines=_lines(lines), operation_id=operation_id)
        return await self._by_id("Release", req)

    async def fulfill(self, reservation_id: str, lines: Iterable[LineLike] = (),
                      operation_id: str = "") -> pb.Reservation:
        req = pb.FulfillRequest(reservation_id=reservation_id, lines=_lines(lines), operation_id=operation_id)
        return await self._by_id("Fulfill", req)

    async def get_reservation(self, reservation_id: str) -> pb.Reservation:
        return await self._by_id("GetReservation", pb.GetReservationRequest(reservation_id=reservation_id))

    async def availability(self, keys: Iterable[tuple[str, str]]) -> list[pb.Availability]:
        """Positions in the order of ``keys``, each read at the owner of its SKU's group: a process
        answers reads only for the groups it owns, so the keys are asked one call per group, at once. Refused as
        the service refuses one call asking them all: no keys, or more than its ``max_availability_keys``
        (``GetRouting`` tells it; the table asked again first), unsent; else the first key at fault, named by its
        place in ``keys``."""
        keys = list(keys)
        if not keys:
            raise invalid_field("keys", "at least one key is required")
        deadline = self._deadline()
        routes = self._routes
        if routes is None or 0 < routes.max_availability_keys < len(keys):  # raised since it was told, maybe
            routes = await self._refresh(routes, deadline)  # refused unsent, nothing else has the table asked again
        check_key_count(len(keys), routes.max_availability_keys)
        by_group: dict[int | None, list[int]] = {}
        for i, (sku, _) in enumerate(keys):
            by_group.setdefault(routes.home((sku,)), []).append(i)

        async def read(group: int | None, idx: list[int]) -> list[pb.Availability]:
            req = pb.GetAvailabilityRequest(keys=[pb.PositionKey(sku=keys[i][0], location=keys[i][1]) for i in idx])
            try:
                return list((await self._send("GetAvailability", req, group, deadline)).positions)
            except InvalidRequest as exc:  # a key at fault named by its place in the caller's keys, not in this call
                raise renumbered(exc, "keys", idx) from None

        return await read_groups(len(keys), by_group, read)

    async def _by_id(self, rpc: str, req: Any) -> pb.Reservation:
        """A call naming a reservation: to its home group's owner when known; else to any process
        (forwarded there), and the home learnt from the answer's lines."""
        home = self._homes.get(req.reservation_id)
        reservation: pb.Reservation = (await self._send(rpc, req, home, self._deadline())).reservation
        if home is None and self._routes is not None:
            learnt = self._routes.home(line.sku for line in reservation.lines)
            if learnt is not None:
                self._homes.put(req.reservation_id, learnt)
        return reservation

    def _deadline(self) -> float:
        return time.monotonic() + self.timeout_s

    async def _send(self, rpc: str, req: Any, group: int | None, deadline: float) -> Any:
        """``req`` to the owner of ``group``, asking for redirects, and following them; to any
        process without asking (it forwards the call) while the group or its owner is unknown;
        every try within what is left until ``deadline``. A change lost with a process that had it
        is in doubt (R7), whatever a process asked next refuses short of a decision on the
        reservation (``DECIDED``): not made there (or not asked at all) is not not made."""
        lost: list[Retryable] = []
        try:
            return await self._hops(rpc, req, group, deadline, lost)
        except AtpError as exc:
            if lost and rpc in CHANGES and exc is not lost[0] and not isinstance(exc, DECIDED):
                raise in_doubt(lost[0], exc) from exc
            raise

    async def _hops(self, rpc: str, req: Any, group: int | None, deadline: float, lost: list[Retryable]) -> Any:
        """``_send``'s tries; those lost with a process that may have had them are put in ``lost``."""
        routes = await self._current(deadline)
        target = routes.owner(group)
        for hop in range(MAX_HOPS + 1):
            address = target or routes.address
            try:
                return await self._call_at(address, rpc, req, _REDIRECT if target else (), _left(deadline))
            except Retryable as exc:
                if target and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    self._suspect = (routes, address)
                if _unanswered(exc) and not self._never_sent(exc):
                    lost.append(exc)
                moved = moved_of(exc.trailing_metadata())  # type: ignore[arg-type]
                if hop == MAX_HOPS or (moved is None and not _unanswered(exc)):
                    raise
                routes = await self._refresh(routes, deadline, avoid="" if moved else address)
                if moved is not None:
                    group, target = moved
                    if not target:  # no process owns the group now: retry after the RetryInfo delay
                        raise
                else:
                    target = routes.owner(group)
                    if (target or routes.address) == address:  # nobody else to ask
                        raise
        raise AssertionError("unreachable: the last hop returns or raises")

    def _never_sent(self, error: AtpError) -> bool:
        """Whether the call refused so was certainly not sent (R7: then not in doubt)."""
        return self._tries_once and (error.details() or "").startswith(_NOT_SENT)

    async def _current(self, deadline: float) -> Routes:
        """The table to route by: asked for again first when an owner it names let a call run out of
        deadline. A process paused or cut off answers nothing — no redirect, no refused connection
        — and loses its groups to another process once its lease ends: kept, the table would send
        every later call of those groups to it, each until its deadline, for as long as it is silent."""
        if self._routes is None:
            return await self._refresh(None, deadline)
        if self._suspect is not None and self._suspect[0] is self._routes:
            return await self._refresh(self._routes, deadline, avoid=self._suspect[1])
        return self._routes

    async def _refresh(self, seen: Routes | None, deadline: float, avoid: str = "") -> Routes:
        """The routing table from the first process that answers (``avoid`` did not answer a
        moment ago); once for many calls redirected together. Waiting for another call's asking
        (its seeds paused, it waits out its own deadline) ends by this call's deadline."""
        if not await _taken(self._refreshing, deadline):
            raise deadline_exceeded("waiting for the routing table another call is asking for")
        try:
            if self._routes is not None and self._routes is not seen:
                return self._routes  # asked meanwhile, for another call
            known = dict.fromkeys((*self.seeds, *(seen.addresses() if seen else ())))
            candidates = [a for a in known if a != avoid] + ([avoid] if avoid in known else [])
            self._routes = await self._first_routing(candidates, deadline)
            return self._routes
        finally:
            self._refreshing.release()

    async def _first_routing(self, candidates: list[str], deadline: float) -> Routes:
        """The table of whichever candidate answers first, all asked at once: asked one after the
        other, each process that does not answer (paused, cut off) would take a deadline of its
        own before the next is asked, and a call would last many times its deadline."""
        asked = [asyncio.ensure_future(self._routing_of(address, _left(deadline))) for address in candidates]
        failure: AtpError | None = None
        try:
            for answer in asyncio.as_completed(asked):
                try:
                    return await answer
                except AtpError as exc:
                    if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                        raise
                    failure = exc
            assert failure is not None
            raise failure
        finally:
            for task in asked:
                task.cancel()
            await asyncio.gather(*asked, return_exceptions=True)  # none left running, none unretrieved

    async def _routing_of(self, address: str, timeout_s: float) -> Routes:
        try:
            return Routes.of(await self._call_at(address, "GetRouting", pb.GetRoutingRequest(), (), timeout_s))
        except AtpError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
        # A service without GetRouting: every call goes to it, and it answers them all.
        return Routes(0, address, (), routable=False)

    async def _call_at(self, address: str, rpc: str, req: Any, metadata: Sequence[tuple[str, str]],
                       timeout_s: float) -> Any:
        """``rpc`` at the process at ``address``, on its channel, which is not closed under the call."""
        with self._using(address) as client:
            return await client._call(getattr(client.stub, rpc), req, metadata, timeout_s)

    @contextmanager
    def _using(self, address: str) -> Iterator[AtpClient]:
        """The channel to ``address``, counted in use until the block ends: a channel dropped from the
        pool meanwhile is closed only then. Closed at once (a grace of 5 s), it cancelled the calls on
        it: a Reserve in the owner's hands raised ``asyncio.CancelledError``, made there all the same
        (R7: in doubt, never told so) — for no fault of the service, past ``max_clients`` processes."""
        client = self._client(address)
        self._in_flight[client] = self._in_flight.get(client, 0) + 1
        try:
            yield client
        finally:
            left = self._in_flight.pop(client) - 1
            if left:
                self._in_flight[client] = left
            elif client in self._draining:
                self._draining.discard(client)
                self._close_later(client)

    def _client(self, address: str) -> AtpClient:
        client = self._clients.get(address)
        if client is None:
            if self._closed:  # a channel opened now would be closed by nobody
                raise grpc.aio.UsageError("RoutedClient is closed.")
            client = self._connect(address)
            dropped = self._clients.put(address, client, busy=self._in_flight.__contains__)
            if dropped is not None and dropped[1] in self._in_flight:
                self._draining.add(dropped[1])
            elif dropped is not None:
                self._close_later(dropped[1])
        return client

    def _close_later(self, client: AtpClient) -> None:
        """``client``'s channel closed in a task of its own, which ``close()`` waits for."""
        closing = asyncio.ensure_future(client.close())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)


async def _closed(clients: list[AtpClient], closing: set[asyncio.Task[None]]) -> None:
    """``clients`` closed, and the channels dropped before (``closing``) closed."""
    await asyncio.gather(*(c.close() for c in clients), *closing)


def _heard(task: asyncio.Task[None]) -> None:
    """A close's failure retrieved even when every caller was cancelled meanwhile (no "never retrieved")."""
    if not task.cancelled():
        task.exception()


def _unanswered(error: AtpError) -> bool:
    """No process answered (gRPC's own UNAVAILABLE: connection refused, reset, no route)."""
    return error.code() == grpc.StatusCode.UNAVAILABLE and not error.reason


def _service_config_in(options: Sequence[tuple[str, Any]]) -> bool:
    """Whether ``options`` give gRPC a service config (the published one, docs/API.md), which may
    retry a call: then, as with ``retry``, a last try's "failed to connect" hides an earlier one lost."""
    given = dict(options)
    return "grpc.service_config" in given and given.get("grpc.enable_retries", 1) != 0


async def _taken(lock: asyncio.Lock, deadline: float) -> bool:
    """Whether ``lock`` was taken by ``deadline``; never left taken otherwise (the caller cancelled
    too). A task of its own: a timeout around ``acquire`` may cancel it once it has the lock."""
    taking = asyncio.ensure_future(lock.acquire())
    try:
        await asyncio.wait({taking}, timeout=_left(deadline))
    except BaseException:
        if not taking.cancel():  # done: taken, and given back
            lock.release()
        raise
    return not taking.cancel()  # cancel() is False once done: taken; else it ends cancelled, not taken


def _left(deadline: float) -> float:
    """Seconds left until ``deadline`` (0 once past it: gRPC then ends the call DEADLINE_EXCEEDED)."""
    return max(0.0, deadline - time.monotonic())
