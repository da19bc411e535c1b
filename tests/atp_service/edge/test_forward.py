"""A call for another process's shard group, between two real services: forwarded to the owner,
or redirected — and RoutedClient following the redirect.

Ownership is not here yet: the two services own keyspaces of their own (two key prefixes on one
Redis), and a test makes one's engine refuse a call ``Moved`` to the other, as it will when the
other owns the call's group.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from atp_client import AtpClient, RetryPolicy, RoutedClient, parse_moved, place, tls_credentials, typed
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from atp_service.app.certs import make_certs
from atp_service.edge import forward
from atp_service.edge.auth import new_token, token_hash
from atp_service.edge.forward import PEER_RECONNECT_MAX_MS, Forwarder
from atp_service.edge.peers import step_sender
from atp_service.edge.routing import Route, RoutingTable
from atp_service.metrics import EdgeMetrics
from reservation import Moved, Reason, Unavailable
from tests.atp_service.app.test_processes import SHARDS, balanced, group_of, members_read, owned, start_process
from tests.atp_service.edge.test_api import receipt
from tests.atp_service.edge.test_routing import advertised, stock
from tests.conftest import ServiceFactory
from tests.ports import held_port
from tests.waiting import until

Pair = tuple[AtpService, str, AtpService, str]
__all__ = ["start_process"]  # the fixture, used here by name


@pytest.fixture
async def pair(start_service: ServiceFactory, tmp_path: Path) -> AsyncIterator[Pair]:
    """Two services (auth on, one callers file), each advertised; their peer channels closed after."""
    callers = tmp_path / "callers.toml"
    callers.write_text(f'[[callers]]\nname = "oms"\nroles = ["oms", "ingest"]\ntoken_sha256 = "{token_hash(TOKEN)}"\n')
    a, _ = await start_service(auth="on", callers_file=callers)
    b, _ = await start_service(auth="on", callers_file=callers, key_prefix="atp-b:")
    yield a, advertised(a), b, advertised(b)
    for service in (a, b):
        await service._servicer.aclose()


TOKEN = new_token()
ANSWER_BOUND_S = 20.0
"""The deadline of a call its holder answers at once: a silent peer waited for would still run it out;
the bound only stops a hang (3 s was short of what a busy host can take for three processes to answer)."""


def moved_away(monkeypatch: pytest.MonkeyPatch, service: AtpService, method: str, owner: str) -> int:
    """``service``'s engine refuses ``method`` as owned by ``owner``; returns the group it names."""
    group = place("A", service.config.shards)

    async def refuse(*_args: Any, **_kw: Any) -> Any:
        raise Moved(group, owner, epoch=7)

    monkeypatch.setattr(service.engine, method, refuse)
    return group


def forwarded(service: AtpService, method: str, outcome: str) -> float:
    value = service.metrics.registry.get_sample_value("atp_forwarded_calls_total",
                                                      {"method": method, "outcome": outcome})
    return value or 0.0


async def test_a_call_is_forwarded_to_the_owner_with_the_callers_token(pair: Pair,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    a, a_address, b, b_address = pair
    async with AtpClient(a_address, token=TOKEN, timeout_s=5) as via_a, \
            AtpClient(b_address, token=TOKEN, timeout_s=5) as at_b:
        await stock(at_b, b.clock.now_ms())
        moved_away(monkeypatch, a, "reserve", b_address)
        held = await via_a.reserve("r1", [("A", "L", 2)])
        assert held.state == pb.RESERVATION_STATE_HELD  # B's answer: B has the stock, A has none
        assert (await at_b.get_reservation("r1")).lines[0].held == 2
        assert forwarded(a, "Reserve", "ok") == 1

        # The owner's refusal comes back as it was: status, message, details.
        moved_away(monkeypatch, a, "confirm", b_address)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await via_a.confirm("never-made")
        refusal = typed(err.value).refusal
        assert (refusal.code, refusal.reason) == (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
        with pytest.raises(grpc.aio.AioRpcError) as direct:
            await at_b.confirm("never-made")
        assert err.value.details() == direct.value.details()
        assert forwarded(a, "Confirm", "error") == 1


async def test_a_caller_that_routes_by_itself_is_redirected(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    a, a_address, _, b_address = pair
    group = moved_away(monkeypatch, a, "reserve", b_address)
    async with AtpClient(a_address, token=TOKEN, timeout_s=5) as via_a:
        call = via_a.stub.Reserve(pb.ReserveRequest(reservation_id="r1", lines=[pb.Line(sku="A", location="L",
                                                                                        quantity=1)]),
                                  metadata=(("atp-routing", "redirect"),))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
    refusal = typed(err.value).refusal
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAVAILABLE, "GROUP_MOVED")
    assert refusal.metadata == {"group": str(group), "owner": b_address, "epoch": "7"}
    assert refusal.retry_delay_s is not None
    trailers = dict(err.value.trailing_metadata())  # type: ignore[arg-type]
    assert parse_moved(trailers["atp-moved"]) == (group, b_address)
    assert forwarded(a, "Reserve", "redirected") == 1


async def test_a_forwarded_call_is_never_forwarded_again(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    a, a_address, b, b_address = pair
    group = moved_away(monkeypatch, a, "reserve", b_address)
    moved_away(monkeypatch, b, "reserve", a_address)  # each thinks the other owns the group
    async with AtpClient(a_address, token=TOKEN, timeout_s=5) as via_a:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await via_a.reserve("r1", [("A", "L", 1)])
    assert typed(err.value).reason == "GROUP_MOVED"
    trailers = dict(err.value.trailing_metadata())  # type: ignore[arg-type]
    assert parse_moved(trailers["atp-moved"]) == (group, a_address)  # B's redirect, passed back by A
    assert (forwarded(a, "Reserve", "error"), forwarded(b, "Reserve", "redirected")) == (1, 1)


async def test_a_group_without_owner_is_redirected_with_an_empty_address(pair: Pair,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    a, a_address, _, _ = pair
    group = moved_away(monkeypatch, a, "get_reservation", "")
    async with AtpClient(a_address, token=TOKEN, timeout_s=5) as via_a:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await via_a.get_reservation("r1")
    assert typed(err.value).reason == "GROUP_MOVED"
    assert dict(err.value.trailing_metadata())["atp-moved"] == f"{group} "  # type: ignore[arg-type]


async def test_routed_client_follows_a_redirect_and_refreshes_its_routes(pair: Pair,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    a, a_address, b, b_address = pair
    async with AtpClient(b_address, token=TOKEN, timeout_s=5) as at_b, \
            RoutedClient(a_address, token=TOKEN, timeout_s=5) as routed:
        await stock(at_b, b.clock.now_ms())
        assert (await routed.refresh()).owners == (a_address,) * a.config.shards  # A owns every group
        group = moved_away(monkeypatch, a, "reserve", b_address)  # then B takes the group of "A" over
        a._servicer.routing = lambda: RoutingTable(a.config.shards, a_address, tuple(
            Route(g, b_address if g == group else a_address, 7 if g == group else 0) for g in range(a.config.shards)))
        assert (await routed.reserve("r1", [("A", "L", 2)])).state == pb.RESERVATION_STATE_HELD
        assert routed.routes is not None and routed.routes.owner(group) == b_address
        assert (await routed.confirm("r1")).state == pb.RESERVATION_STATE_CONFIRMED  # straight to B
    assert (forwarded(a, "Reserve", "redirected"), forwarded(a, "Confirm", "redirected")) == (1, 0)


async def test_peers_are_reached_over_mutual_tls(start_service: ServiceFactory, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    certs = make_certs(tmp_path / "certs")
    ca, key, cert = ((certs / name).read_bytes() for name in ("ca.pem", "client.key", "client.pem"))
    tls = {"tls_cert": certs / "server.pem", "tls_key": certs / "server.key", "tls_client_ca": certs / "ca.pem"}
    a, _ = await start_service(**tls)
    b, _ = await start_service(**tls, key_prefix="atp-b:")
    a._servicer.forwarder = Forwarder(a.metrics.edge, tls_root=ca, tls_identity=(key, cert))
    a_address, b_address = advertised(a), advertised(b)
    credentials = tls_credentials(ca, cert, key)
    try:
        async with AtpClient(a_address, credentials=credentials, timeout_s=5) as via_a, \
                AtpClient(b_address, credentials=credentials, timeout_s=5) as at_b:
            await stock(at_b, b.clock.now_ms())
            moved_away(monkeypatch, a, "reserve", b_address)
            assert (await via_a.reserve("r1", [("A", "L", 1)])).state == pb.RESERVATION_STATE_HELD
    finally:
        await a._servicer.aclose()
    assert forwarded(a, "Reserve", "ok") == 1


async def test_the_peer_channels_are_bounded() -> None:
    forwarder = Forwarder(EdgeMetrics(), max_peers=2)
    for port in (1, 2, 1, 3):  # channels connect on first use: none of these is ever called
        with forwarder.using(f"127.0.0.1:{port}"):
            pass
    assert forwarder.peers == ["127.0.0.1:1", "127.0.0.1:3"]  # 2, the least recently used, closed
    await forwarder.aclose()
    assert forwarder.peers == []


async def test_no_peer_channel_is_opened_once_the_forwarder_is_closed() -> None:
    """During a stop, an order's saga still running sent a step after the peer channels were
    closed: it opened a new channel that nothing closed any more. It is refused SHUTTING_DOWN
    instead (the saga goes on after the restart, as after any step it could not send)."""
    forwarder = Forwarder(EdgeMetrics())
    with forwarder.using(f"127.0.0.1:{held_port()}"):
        pass
    await forwarder.aclose()
    with pytest.raises(Unavailable) as refused:
        await step_sender(forwarder, None)(f"127.0.0.1:{held_port()}", b"")
    assert refused.value.reason == Reason.SHUTTING_DOWN
    assert forwarder.peers == []


def routed(running: list[tuple[AtpService, Any]]) -> bool:
    """Every process knows every group's owner by its advertised address."""
    owners = {g: s._servicer.address for s, _ in running for g in owned(s)}
    return all(s.membership is not None and all(s.membership.where(g)[0] == owners.get(g) for g in range(SHARDS))
               for s, _ in running)


async def test_a_reservation_held_elsewhere_is_answered_once_its_holder_answers_whatever_a_silent_peer_does(
        start_process: ServiceFactory) -> None:
    """A call naming only a reservation (Confirm, ...) sent to a process not holding it is asked of
    every other process at once; it waited for all of them. A peer that stopped answering while it
    kept its leases (hung, or cut off from the other processes but not from Redis) held every such
    call until its caller's deadline: the caller got DEADLINE_EXCEEDED for a Confirm its holder had
    applied at once — and again on each retry, for as long as that peer stayed silent."""
    held: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda _r, w: held.append(w), "127.0.0.1", 0)  # accepts, never answers
    a = await start_process(port=held_port(), host="127.0.0.1")
    b = await start_process(port=held_port(), host="127.0.0.1")
    c = await start_process(port=held_port(), host="127.0.0.1",
                            advertise_address=f"127.0.0.1:{silent.sockets[0].getsockname()[1]}")
    running = [a, b, c]
    await members_read(running)
    await until(lambda: balanced(running) and routed(running), "the groups spread, every process knowing where", 60)
    sku = next(s for s in (f"k{i}" for i in range(64)) if group_of(s) in owned(b[0]))
    await b[1].record_events([receipt("in-1", sku, "DC", 5)])
    await b[1].reserve("r-held", [(sku, "DC", 2)])
    try:
        confirmed = await a[1].stub.Confirm(pb.ConfirmRequest(reservation_id="r-held"), timeout=ANSWER_BOUND_S)
        assert confirmed.reservation.state == pb.RESERVATION_STATE_CONFIRMED
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # the holder's decision, too
            await a[1].stub.Release(pb.ReleaseRequest(reservation_id="r-held", operation_id="op-1", lines=[
                pb.Line(sku=sku, location="DC", quantity=9)]), timeout=ANSWER_BOUND_S)
        assert refused.value.code() != grpc.StatusCode.DEADLINE_EXCEEDED, refused.value.details()
    finally:
        for writer in held:
            writer.close()
        silent.close()


class InHand:
    """An owner's ``reserve`` held in its hands: ``entered`` once called; it lands only after ``go``,
    whatever happens to its caller (the owner's work, which its caller's going does not undo)."""

    def __init__(self, reserve: Callable[[Any], Awaitable[Any]]) -> None:
        self._reserve = reserve
        self.entered, self.go = asyncio.Event(), asyncio.Event()
        self.landed: list[asyncio.Future[Any]] = []

    async def __call__(self, cmd: Any) -> Any:
        async def late() -> Any:
            await self.go.wait()
            return await self._reserve(cmd)
        self.landed.append(asyncio.ensure_future(late()))
        self.entered.set()
        return await asyncio.shield(self.landed[0])


async def lost_in_hand(call: Awaitable[Any], in_hand: InHand, relay: Relay) -> grpc.aio.AioRpcError:
    """``call`` sent; once its part is in the holder's hand the relay to the holder is cut, then the part
    lands there after all (the holder's work, R8): the refusal the caller was told."""
    sent = asyncio.ensure_future(call)
    await asyncio.wait_for(in_hand.entered.wait(), 10)
    await relay.cut()
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await sent
    in_hand.go.set()
    await in_hand.landed[0]
    return lost.value


@contextlib.asynccontextmanager
async def held_at_the_owner(pair: Pair, monkeypatch: pytest.MonkeyPatch, via: str, timeout_s: float
                            ) -> AsyncIterator[tuple[asyncio.Future[Any], InHand, AtpClient]]:
    """A Reserve of r1 sent to A, forwarded to its owner B through ``via`` (B's address, or a relay to
    it), whose engine holds it in hand (``InHand``): the caller's call, the hand, a client of B."""
    a, a_address, b, b_address = pair
    assert b.engine is not None
    in_hand = InHand(b.engine.reserve)
    async with AtpClient(a_address, token=TOKEN, timeout_s=timeout_s, retry=RetryPolicy()) as via_a, \
            AtpClient(b_address, token=TOKEN, timeout_s=5) as at_b:
        await stock(at_b, b.clock.now_ms())
        moved_away(monkeypatch, a, "reserve", via)
        monkeypatch.setattr(b.engine, "reserve", in_hand)
        call = asyncio.ensure_future(via_a.reserve("r1", [("A", "L", 2)]))
        await asyncio.wait_for(in_hand.entered.wait(), 10)
        yield call, in_hand, at_b


class Relay:
    """A TCP relay to a peer process: the connection between two processes, which ``cut`` ends as a
    host that died does (open connections reset, new ones refused)."""

    def __init__(self, target: str) -> None:
        self.host, _, port = target.rpartition(":")
        self.port = int(port)
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _passing(self) -> Callable[[bytes], Awaitable[None]]:
        """The hook of one pipe (one way of one connection), awaited with each read before it is passed on: a
        relay that reads, counts or holds what it passes overrides it (a closure keeps the pipe's own state)."""
        async def as_is(data: bytes) -> None:
            return None
        return as_is

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        passing = self._passing()
        try:
            while data := await source.read(65536):
                await passing(data)
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def test_a_forwarded_change_whose_owner_is_lost_mid_call_is_answered_in_doubt(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner (or the connection to it) was lost while it had a forwarded Reserve in hand: the
    forwarding process passed gRPC's own UNAVAILABLE on, without details — which the API documents
    as an owner that could not be reached, so nothing done — and gRPC's retry at the caller sent
    it again, until the caller was told so. The owner had made the reservation all the same (R7):
    a caller taking "not reached" at its word sells the units again under a new id, and the first
    hold stays until its TTL. It is in doubt, and answered so: OUTCOME_UNKNOWN, not retried by gRPC."""
    relay = Relay(pair[3])
    async with held_at_the_owner(pair, monkeypatch, await relay.start(), 10) as (call, in_hand, at_b):
        await relay.cut()
        with pytest.raises(grpc.aio.AioRpcError) as lost:
            await call
        in_hand.go.set()
        await in_hand.landed[0]
        assert (await at_b.get_reservation("r1")).state == pb.RESERVATION_STATE_HELD  # it was made
    refusal = typed(lost.value).refusal
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN"), refusal


@pytest.fixture
async def silent_peer() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A real gRPC server whose every call, unary or stream, waits for good without a word (a paused owner),
    and the event set once a call has reached it."""
    reached = asyncio.Event()

    async def never(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        reached.set()
        await asyncio.Event().wait()
        return b""

    class Every(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
            if str(details.method).endswith("/ReserveStream"):
                return grpc.stream_stream_rpc_method_handler(never)  # type: ignore[arg-type]
            return grpc.unary_unary_rpc_method_handler(never)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Every(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", reached
    await server.stop(0)


@pytest.mark.parametrize("via", ["forward", "step"])
async def test_a_call_sent_to_a_peer_is_cancelled_as_its_caller_is(
        silent_peer: tuple[str, asyncio.Event], via: str) -> None:
    """A stop or a gone caller ends a send to a peer as a cancellation, never as the peer's refusal
    (``AioRpcError``): read as a refusal, a saga step would be "in doubt, goes on later" and an
    input-stream send would go on with its batch's next request. grpc.aio raises the caller's own
    cancellation as ``CancelledError`` (a call it cancelled locally); this holds it to that."""
    address, reached = silent_peer
    forwarder = Forwarder(EdgeMetrics())
    if via == "forward":
        sending = forwarder.send(address, "Reserve", pb.ReserveRequest(), 60, ())
    else:
        sending = step_sender(forwarder, None)(address, b"")
    task = asyncio.ensure_future(sending)
    try:
        await asyncio.wait_for(reached.wait(), 30)  # the call is at the peer, waiting for its answer
        task.cancel()
        await asyncio.wait([task], timeout=30)
        assert task.cancelled(), task.exception()
    finally:
        await forwarder.aclose()


async def _answers(forwarder: Forwarder, address: str) -> bool:
    try:
        await forwarder.send(address, "GetRouting", pb.GetRoutingRequest(), 2, ())
    except grpc.aio.AioRpcError:
        return False
    return True


async def test_a_peer_back_at_its_address_is_reached_again_at_once_whatever_its_outage_lasted(
        start_service: ServiceFactory) -> None:
    """A peer process down for a while (a host restarted, a crash loop) came back at its address and
    took its groups again, and for up to two minutes every call this process forwarded to it, every
    order step and every fact sent there failed "failed to connect": gRPC's reconnect backoff to a
    peer grew with the outage, 1 s up to its default 120 s, and a peer back in the middle of a wait
    was not tried until the wait ended. Orders over both processes stayed undecided, holding their
    units, and callers of this process were refused a healthy owner's groups. The backoff is bounded
    (``PEER_RECONNECT_MAX_MS``): the peer is reached within about that once it listens.

    The peer comes back just after an attempt to reach it (``_an_attempt``), once the outage has lasted
    ``OUTAGE_S``: where gRPC's own backoff had grown with it, the next attempt came a whole wait later
    (~10.5 s after the sixth: twice the bound on reaching the peer), not a wait somewhere in its middle,
    so an outage shorter than the 30 s a peer back at any moment needed tells the bounded wait from the
    grown one as surely.

    The address is held through the outage (``_held_port``): a port merely found free and left unbound
    for a while may meanwhile be taken by any process on the host (its outgoing connections included),
    and the peer could not come back there."""
    forwarder = Forwarder(EdgeMetrics())
    try:
        with _held_port() as port:
            address = f"127.0.0.1:{port}"
            outage_ends = asyncio.get_running_loop().time() + OUTAGE_S
            while asyncio.get_running_loop().time() < outage_ends:
                assert not await _answers(forwarder, address)  # nothing listens there
                await asyncio.sleep(0.5)
            await _an_attempt(port)
            await start_service(port=port)  # bound and listening while the port is still held
        deadline = asyncio.get_running_loop().time() + 5 * PEER_RECONNECT_MAX_MS / 1000
        while not await _answers(forwarder, address):
            assert asyncio.get_running_loop().time() < deadline, "the peer back at its address is not reached"
            await asyncio.sleep(0.1)
    finally:
        await forwarder.aclose()


OUTAGE_S = 12.0
"""Past the fifth attempt of gRPC's own backoff (1 s growing by 1.6 a try, each wait within 20 %: ~9.3 s, at most
11.1 s), so the attempt ``_an_attempt`` waits for is the sixth or a later one: the wait after it, at least 8.4 s
(10.5 s less 20 %), outlasts the 5 s bound on reaching the peer, where the bounded wait is a second at most."""


async def _an_attempt(port: int) -> None:
    """An attempt to connect to ``port`` seen: a listener (beside the holder, which never listens) takes the
    connection and closes it before gRPC's handshake, an attempt failed as a refused one is; then it is gone.
    Its bound only stops a hang: the next attempt comes within a second, or ~10 s where the backoff grew."""
    listener = socket.socket()
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        listener.setblocking(False)
        connection, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(listener), 60)
        connection.close()
    finally:
        listener.close()


@contextlib.contextmanager
def _held_port() -> Iterator[int]:
    """A loopback port bound here, never listening (a connection there is refused, as where nothing runs),
    with SO_REUSEADDR: while it is held, no process is handed it as a free port (``free_port``'s bind to
    port 0) and no outgoing connection takes it as its own end (``connect`` never picks a port bound with
    ``bind``), yet a server that sets SO_REUSEADDR too, as gRPC's does, binds it and listens: the port is
    never free between the outage and the peer's start (Linux socket(7): such a socket may bind "except
    when there is an active listening socket bound to the address")."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])


@pytest.mark.parametrize("via", ["forward", "step"])
async def test_a_peer_whose_tls_handshake_fails_is_said_so_naming_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, via: str) -> None:
    """A peer's certificate this process does not trust (another CA, peer_tls_ca wrong): every call
    forwarded there, every order step and fact was refused "failed to connect", and nothing said
    why: an order step's refusal read "did not answer an order step (UNAVAILABLE)", not logged at
    all, so orders over both processes stayed undecided, holding their units, with the peer up and
    SERVING and no line naming TLS. Now ``peer_tls_refused`` names the peer and gRPC's reason, and
    a step's refusal carries that reason."""
    trusted, other = make_certs(tmp_path / "trusted"), make_certs(tmp_path / "other")
    server = grpc.aio.server()
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
        [((other / "server.key").read_bytes(), (other / "server.pem").read_bytes())]))
    await server.start()
    address = f"127.0.0.1:{port}"
    forwarder = Forwarder(EdgeMetrics(), tls_root=(trusted / "ca.pem").read_bytes())
    try:
        if via == "forward":
            with pytest.raises(grpc.aio.AioRpcError):
                await forwarder.send(address, "GetRouting", pb.GetRoutingRequest(), 10, ())
        else:
            with pytest.raises(Unavailable) as refused:
                await step_sender(forwarder, None)(address, b"")
            assert "handshake" in refused.value.message.lower(), refused.value.message
    finally:
        await forwarder.aclose()
        await server.stop(0)
    told = [r for r in caplog.records if getattr(r, "event", None) == "peer_tls_refused"]
    assert len(told) == 1 and getattr(told[0], "peer", None) == address, caplog.records
    assert "handshake" in str(getattr(told[0], "reason", "")).lower()


async def test_a_forwarded_change_past_the_peer_calls_bound_is_answered_in_doubt(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forwarded Reserve the owner held longer than ``PEER_CALL_MAX_S`` (its caller's deadline still
    far off) ended on gRPC's own DEADLINE_EXCEEDED, passed on as if the caller's deadline had run
    out: a caller taking that as its own timeout saw no OUTCOME_UNKNOWN, while the owner went on and
    made the reservation (R7). It is in doubt, and answered so."""
    monkeypatch.setattr(forward, "PEER_CALL_MAX_S", 1.0)  # the bound, not the caller's 20 s, ends the call
    async with held_at_the_owner(pair, monkeypatch, pair[3], 20) as (call, in_hand, at_b):
        with pytest.raises(grpc.aio.AioRpcError) as bounded:
            await call
        in_hand.go.set()
        await in_hand.landed[0]
        assert (await at_b.get_reservation("r1")).state == pb.RESERVATION_STATE_HELD  # it was made
    refusal = typed(bounded.value).refusal
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN"), refusal


async def test_a_forwarded_change_its_owner_cancels_at_its_stop_is_answered_in_doubt(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner's gRPC server stopped with a forwarded Reserve still in hand (past its grace): the
    owner may have made the change (R7), so the caller hears it in doubt, not a status it could read
    as its own cancellation or as nothing done."""
    async with held_at_the_owner(pair, monkeypatch, pair[3], 20) as (call, in_hand, _):
        await pair[2]._stop_server(0)  # the owner's gRPC server stops: the call in hand is cancelled there
        with pytest.raises(grpc.aio.AioRpcError) as cancelled:
            await call
    in_hand.go.set()
    await asyncio.gather(*in_hand.landed, return_exceptions=True)
    refusal = typed(cancelled.value).refusal
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN"), refusal


async def test_a_located_change_lost_with_its_holder_is_in_doubt_whatever_another_peer_answered(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Confirm sent to a process not holding the reservation is asked of every other process. Its
    holder was lost with it in hand (the connection to it reset), and another peer could not be reached
    at all (a process gone, still in the routing table until its leases run out): the caller was told
    that peer's "failed to connect", which says the call was never sent — the first refusal in the
    order of the peers' addresses, whatever the others said. The holder had made the change (R7): it
    is in doubt, and answered so, whichever peer's address sorts first."""
    a, a_address, b, b_address = pair
    assert b.engine is not None
    relay = Relay(b_address)
    holder = await relay.start()
    gone = "127.0.0.1:1"  # nothing listens there: sorted before the holder's address
    assert sorted([gone, holder])[0] == gone
    shards = a.config.shards
    table = RoutingTable(shards, a_address, (Route(0, gone, 1), *(Route(g, holder, 1) for g in range(1, shards))))
    monkeypatch.setattr(a._servicer.forwarder, "routing", lambda: table)
    in_hand = InHand(b.engine.confirm)
    async with AtpClient(a_address, token=TOKEN, timeout_s=ANSWER_BOUND_S) as via_a, \
            AtpClient(b_address, token=TOKEN, timeout_s=5) as at_b:
        await stock(at_b, b.clock.now_ms())
        await at_b.reserve("r1", [("A", "L", 2)])

        async def not_here(*_args: Any) -> Any:
            raise Moved(-1, "", serving=())

        monkeypatch.setattr(a.engine, "confirm", not_here)
        monkeypatch.setattr(b.engine, "confirm", in_hand)
        lost = await lost_in_hand(via_a.confirm("r1"), in_hand, relay)
        assert (await at_b.get_reservation("r1")).state == pb.RESERVATION_STATE_CONFIRMED  # it was made
    refusal = typed(lost).refusal
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAVAILABLE, "OUTCOME_UNKNOWN"), refusal


async def test_every_located_call_is_counted_by_whether_its_holder_answered(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call naming a reservation another process holds, asked of every process, was counted only when its holder
    answered it: its holder's refusal (a Confirm of a released reservation) and a call no process answered for (an
    id held nowhere, NOT_FOUND once every other was asked) added nothing to ``atp_forwarded_calls_total``, whatever
    the calls to every peer they cost. The first counts ``located``, the second ``error``."""
    a, a_address, b, b_address = pair
    assert b.engine is not None
    shards = a.config.shards
    table = RoutingTable(shards, a_address, tuple(Route(g, b_address, 1) for g in range(shards)))
    monkeypatch.setattr(a._servicer.forwarder, "routing", lambda: table)

    async def not_here(*_args: Any) -> Any:
        raise Moved(-1, "", serving=())

    async def held_nowhere(*_args: Any) -> Any:
        raise Moved(-1, "", serving=tuple(range(shards)))  # b answers for every group, and holds no such id

    async with AtpClient(a_address, token=TOKEN, timeout_s=ANSWER_BOUND_S) as via_a, \
            AtpClient(b_address, token=TOKEN, timeout_s=5) as at_b:
        await stock(at_b, b.clock.now_ms())
        await at_b.reserve("r1", [("A", "L", 2)])
        await at_b.release("r1")
        monkeypatch.setattr(a.engine, "confirm", not_here)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await via_a.confirm("r1")
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # the holder's decision, relayed
        assert (forwarded(a, "Confirm", "located"), forwarded(a, "Confirm", "error")) == (1, 0)

        monkeypatch.setattr(a.engine, "get_reservation", not_here)
        monkeypatch.setattr(b.engine, "get_reservation", held_nowhere)
        with pytest.raises(grpc.aio.AioRpcError) as nowhere:
            await via_a.get_reservation("never-made")
        assert typed(nowhere.value).refusal.code == grpc.StatusCode.NOT_FOUND  # not retried: no process holds it
        assert (forwarded(a, "GetReservation", "located"), forwarded(a, "GetReservation", "error")) == (0, 1)
