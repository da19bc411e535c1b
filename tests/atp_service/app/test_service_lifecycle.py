"""A start that cannot finish (Redis unreachable) can always be stopped: in-process by ``stop()``,
and for ``atp-service serve`` by SIGTERM; gRPC's server is stopped once, never twice at once."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
import redis.asyncio

from atp_client import AtpClient
from atp_service import AtpService, EmbeddedRedis
from atp_service.app import cli
from atp_service.app.keyspace import StartupError
from atp_service.intake.unread import _MAKE
from atp_service.storage.keys import Keyspace
from atp_service.storage.leases import GroupLeases
from atp_service.storage.log import LogStore
from reservation import Reason, Unavailable
from tests.atp_service.app.test_cli import wait_for_line
from tests.atp_service.app.test_healthcheck import health, starting_until_logged
from tests.atp_service.channel_helpers import fact, write_estate
from tests.atp_service.redis_proxy import HoldingProxy
from tests.atp_service.refusals import said
from tests.atp_service.storage.test_embedded_redis import SLOW_LOAD, populated
from tests.conftest import spawned
from tests.conftest import test_config as make_config
from tests.ports import held_port
from tests.waiting import answered


async def waiting_for_redis(service: AtpService) -> asyncio.Task[None]:
    """``service.start()`` as a task, once it listens and waits for an unreachable Redis."""
    async with starting_until_logged(service, "waiting for Redis") as starting:
        return starting


def port_is_free(port: int) -> bool:
    """Whether a server could listen at ``port`` now: a probe binds it as gRPC and the other servers here
    do (SO_REUSEADDR) and listens, which only a socket listening there refuses. The port is the test's
    own (``held_port``): its holder, bound and never listening, is no such socket, and no other xdist
    worker is handed the port once the service lets it go (one bound to port 0 could be, between the
    stop and the probe: the probe then said the service kept it)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen()
        except OSError:
            return False
        return True


async def test_stop_while_starting_ends_the_start_and_frees_the_port() -> None:
    """Free once stop() returns, not later: gRPC's stop ends once its listeners are destroyed."""
    service = AtpService(make_config(port=held_port()), f"redis://127.0.0.1:{held_port()}/0")
    starting = await waiting_for_redis(service)
    assert not port_is_free(service.port)
    await asyncio.wait_for(service.stop(grace_s=0), timeout=30)  # else it would wait for Redis for ever
    assert starting.done() and starting.cancelled()
    assert port_is_free(service.port)


class StopsWatched:
    """Wraps a gRPC server's ``stop`` to count its calls and the most that ran at once."""

    def __init__(self, stop: Callable[[float | None], Awaitable[None]]) -> None:
        self._stop, self.calls, self.running, self.most_at_once = stop, 0, 0, 0

    async def __call__(self, grace: float | None) -> None:
        self.calls += 1
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.sleep(0.05)  # a slow stop: a second one would overlap it
            await self._stop(grace)
        finally:
            self.running -= 1


async def test_a_cancelled_start_and_two_stops_stop_grpc_once() -> None:
    """The start's own clean-up stops the server too; overlapping stops crash grpcio's core."""
    service = AtpService(make_config(port=held_port()), f"redis://127.0.0.1:{held_port()}/0")
    starting = await waiting_for_redis(service)
    assert service._server is not None and not port_is_free(service.port)
    watched = StopsWatched(service._server.stop)
    service._server.stop = watched  # type: ignore[method-assign]
    starting.cancel()
    await asyncio.wait_for(asyncio.gather(service.stop(grace_s=0), service.stop(grace_s=0)), timeout=30)
    assert (watched.calls, watched.most_at_once) == (1, 1)
    assert starting.cancelled() and port_is_free(service.port)


@pytest.mark.slow
def test_sigterm_while_waiting_for_redis_exits_0(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    proc = spawned(subprocess.Popen(
        [sys.executable, "-m", "atp_service", "serve", "--redis-url", f"redis://127.0.0.1:{held_port()}/0",
         "--port", "0", "--metrics-port", "-1", "--no-demo", "--auth", "off"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT))
    wait_for_line(proc, log, "waiting for Redis")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log.read_text()
    assert "stop signal while starting" in log.read_text()


def ignored_signals(pid: int) -> set[signal.Signals]:
    """The signals process ``pid`` ignores (``SigIgn`` in ``/proc/<pid>/status``): one sent is dropped at once."""
    (mask,) = (line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("SigIgn:"))
    return {sig for sig in signal.Signals if int(mask, 16) >> (sig - 1) & 1}


@pytest.mark.slow
def test_sigterm_while_the_embedded_redis_loads_stops_both_and_exits_0(tmp_path: Path) -> None:
    """Before the service takes the signals over, its embedded Redis loads the AOF (a large
    estate's takes a while): a stop then abandons the start and stops that Redis, not the service
    alone (which left its Redis running with nobody to stop it)."""
    populated(tmp_path / "data" / "redis", 10_000)
    slow_redis = tmp_path / "bin" / "redis-server"  # the real one, loading slowly
    slow_redis.parent.mkdir()
    slow_redis.write_text(f'#!/bin/sh\nexec {shutil.which("redis-server")} "$@" {" ".join(SLOW_LOAD)}\n')
    slow_redis.chmod(0o755)
    log = tmp_path / "serve.log"
    proc = spawned(subprocess.Popen(
        [sys.executable, "-m", "atp_service", "serve", "--data-dir", str(tmp_path / "data"), "--port", "0",
         "--metrics-port", "-1", "--no-demo", "--auth", "off"],
        env={**os.environ, "PATH": f"{slow_redis.parent}{os.pathsep}{os.environ['PATH']}"},
        stdout=log.open("wb"), stderr=subprocess.STDOUT))
    wait_for_line(proc, log, "loading its append-only file")
    redis_pid = int((tmp_path / "data" / "redis" / "redis-server.pid").read_text())
    # A reload, a dump of the tasks: not now. Ignored (the kernel drops them as they are sent), read where the kernel
    # keeps it, not slept on: a process that stopped on SIGHUP, later than a sleep, passed one.
    assert ignored_signals(proc.pid) >= {signal.SIGHUP, signal.SIGUSR1}, log.read_text()
    for ignored in (signal.SIGHUP, signal.SIGUSR1):
        proc.send_signal(ignored)
    assert proc.poll() is None, log.read_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log.read_text()
    assert "stop signal while the embedded redis-server was starting" in log.read_text()
    assert not Path(f"/proc/{redis_pid}").exists()  # stopped (and reaped) by the service


async def test_a_stop_signal_before_serve_took_the_signals_over_starts_nothing() -> None:
    port, loop = held_port(), asyncio.get_running_loop()
    try:
        assert await cli._serve(make_config(port=port), f"redis://127.0.0.1:{held_port()}/0",
                                stopped_early=lambda: True) == 0
        assert port_is_free(port)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
            loop.remove_signal_handler(sig)  # the test process's own again


async def test_a_stop_at_any_early_turn_of_a_start_ends_it_cleanly() -> None:
    """Stopped after 0, 1, 2, ... turns of the event loop: while gRPC itself starts (whose start
    must not be cancelled half-way), while it listens, while it waits for Redis."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        for turns in range(12):
            service = AtpService(make_config(port=held_port()), f"redis://127.0.0.1:{held_port()}/0")
            starting = asyncio.create_task(service.start())
            for _ in range(turns):
                await asyncio.sleep(0)
            await asyncio.wait_for(service.stop(grace_s=0), timeout=30)
            assert starting.done() and starting.cancelled(), turns
            assert service.port == 0 or port_is_free(service.port), turns
            del service, starting
            gc.collect()  # a task that failed unseen says so when collected
        assert errors == []
    finally:
        loop.set_exception_handler(None)


async def test_a_stop_while_a_lease_is_being_granted_gives_it_back(redis_url: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Leased groups, a slow network: the stop lands once Redis has granted a group but before the
    grant's reply is back. The lease is given back once the reply comes, before the connections
    close, instead of keeping the group from every other process until it runs out.

    The grant's reply alone is late (``GrantReplyHeld``), held from its first byte until the stop waits
    for the give-back of the taking it cancelled (``GroupLeases.given_back`` entered, that give-back
    still pending): as far as a stop can go without the reply, whatever the host's pace. A stop that
    closed its connections first (the give-back then on a new one, or none) or ended meanwhile fails
    it, on any host."""
    upstream = redis_url.removeprefix("redis://").split("/")[0]
    proxy = GrantReplyHeld(upstream)
    url = await proxy.start()
    admin = redis.asyncio.Redis.from_url(redis_url)
    try:
        config = make_config(ownership="leases", lease_ms=60_000, input_streams=(), redis_timeout_s=10.0,
                             port=held_port())
        service = AtpService(config, url)
        starting = asyncio.create_task(service.start())
        await asyncio.wait_for(proxy.holding.wait(), 60)  # a group granted, its reply still on the way
        assert await admin.keys("*}:lease") and not starting.done() and service.membership is not None
        leases, before = service.membership.leases, len(proxy.seen)  # the start's own connections closed before
        waits = await stopped_until_given_back(service, leases, monkeypatch)
        assert waits == [True]  # the stop waits for the cancelled taking's give-back, the grant's answer held
        proxy.let_go()
        await asyncio.wait_for(service.stop(), timeout=60)
        assert starting.cancelled()
        seen = proxy.seen[before:]
        assert "release" in seen and "closed" not in seen[:seen.index("release")], seen  # given back, then closed
        assert await admin.keys("*}:lease") == []
    finally:
        await admin.aclose()
        await proxy.close()


async def stopped_until_given_back(service: AtpService, leases: GroupLeases,
                                   monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """``service``'s stop begun, until it first waits for ``leases``' give-backs or ends: for each
    such wait begun, whether it waits for a give-back still pending (``[]``: the stop ended without)."""
    waits: list[bool] = []
    waiting = asyncio.Event()
    given_back = leases.given_back

    async def watched() -> None:
        waits.append(any(not task.done() for task in leases.giving_back))
        waiting.set()
        await given_back()

    monkeypatch.setattr(leases, "given_back", watched)
    stopping = asyncio.ensure_future(service.stop(grace_s=0))
    waited = asyncio.ensure_future(waiting.wait())
    await asyncio.wait((stopping, waited), timeout=60, return_when=asyncio.FIRST_COMPLETED)
    waited.cancel()
    return waits if not stopping.done() else []


class GrantReplyHeld:
    """A TCP proxy in front of Redis that forwards everything at once but the answers to a lease's
    grant (``GroupLeases``'s acquire script; its ``NOSCRIPT`` refusal goes on): held, once Redis ran
    the grant, until ``let_go``. ``seen``: in the order the proxy met them, each lease release sent
    (``release``) and each connection the client closed (``closed``)."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._marker = GroupLeases._ACQUIRE.sha.encode()
        self._release = GroupLeases._RELEASE.sha.encode()
        self.seen: list[str] = []
        self.holding = asyncio.Event()
        self._go = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        """Listen; returns the Redis URL to give the service."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    def let_go(self) -> None:
        self._go.set()

    async def close(self) -> None:
        self._go.set()
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        self._writers += [writer, up_writer]
        granting = [False]  # the next reply on this connection answers a grant
        for coro in (self._up(reader, up_writer, granting), self._down(up_reader, writer, granting)):
            task = asyncio.get_running_loop().create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _up(self, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter, granting: list[bool]) -> None:
        tail = b""
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                if self._marker in tail + chunk:
                    granting[0] = True  # before Redis has it: its answer cannot come first
                if self._release in tail + chunk:
                    self.seen.append("release")
                tail = (tail + chunk)[-64:]
                upstream.write(chunk)
                await upstream.drain()
        self.seen.append("closed")  # by the client (its end, or reset); the proxy's own close cancels this first
        upstream.close()

    async def _down(self, upstream: asyncio.StreamReader, writer: asyncio.StreamWriter, granting: list[bool]) -> None:
        with contextlib.suppress(OSError):
            while data := await upstream.read(65536):
                if granting[0]:
                    granting[0] = False
                    if not data.startswith((b"-", b"!")):  # not an error (NOSCRIPT: loaded, then sent again)
                        self.holding.set()
                        await self._go.wait()
                writer.write(data)
                await writer.drain()
        writer.close()


@asynccontextmanager
async def waiting_at_the_proxy(redis_server: EmbeddedRedis, tmp_path: Path, marker: bytes, **settings: Any
                               ) -> AsyncIterator[tuple[AtpService, asyncio.Task[None], HoldingProxy]]:
    """A service with channels and input streams (and ``settings``) starting through a ``HoldingProxy``
    that holds the commands holding ``marker``: yielded (with its start's task) once it logs that it
    waits for Redis."""
    proxy = HoldingProxy("127.0.0.1", redis_server.port)
    url = await proxy.start()
    proxy.hold(marker)  # each such command times out, and the connection after it too
    service = AtpService(make_config(**{"estate": write_estate(tmp_path), "redis_timeout_s": 0.5, **settings}), url)
    try:
        async with starting_until_logged(service, "waiting for Redis") as starting:
            yield service, starting, proxy
    finally:
        await service.stop()
        await proxy.close()


# The desks' own commands (the start's permission check queues an HSCAN and an XGROUP CREATE of its own,
# neither run): the feeds' state read 10,000 fields at a time, the consumer group made (with its made-again
# mark: ``unread._MAKE``, sent as EVALSHA by its digest).
@pytest.mark.parametrize("marker", [b"COUNT\r\n$5\r\n10000", hashlib.sha1(_MAKE.encode()).hexdigest().encode()],
                         ids=["channel feeds", "input streams"])
async def test_redis_lost_while_the_desks_start_delays_the_start_instead_of_failing_it(
        redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path, marker: bytes) -> None:
    """The start's last steps read Redis too, after recovery (the channel feeds' published state, the
    input streams' consumer group): Redis not answering there is waited out, health NOT_SERVING, as
    before recovery. It failed the start: exit status 1 for `atp-service serve`."""
    async with waiting_at_the_proxy(redis_server, tmp_path, marker) as (service, starting, proxy):
        assert service.engine is not None and not starting.done()  # recovered; the desks wait
        assert (await health(service.port))[0] == 1  # NOT_SERVING
        proxy.hold()
        proxy.drop()
        await asyncio.wait_for(starting, 30)
        assert (await health(service.port))[0] == 0 and service.channels is not None and service.ingestor is not None
        async with AtpClient(f"127.0.0.1:{service.port}") as client:
            await answered(lambda: client.record_events([fact("c1", "COUNT", "sku-a", "store-1", 5,
                                                              1_700_000_000_000)]))
            (a,) = await client.availability([("sku-a", "store-1")])
        assert a.on_hand == 5


def _input_stream_of_another_type(url: str) -> None:
    with redis.Redis.from_url(url) as r:
        r.set("atp:in:pos", "not a stream")


def _channel_state_of_another_type(url: str) -> None:
    with redis.Redis.from_url(url) as r:
        r.set(Keyspace(make_config().key_prefix).channel_state("market"), "not a hash")


@pytest.mark.parametrize("spoil", [_input_stream_of_another_type, _channel_state_of_another_type],
                         ids=["input stream", "channel feed"])
async def test_a_refusal_that_waiting_does_not_cure_fails_the_start_naming_it(
        redis_url: str, tmp_path: Path, spoil: Callable[[str], None]) -> None:
    """A key of another type where the start reads or makes one (WRONGTYPE; a command the ACL denies
    is alike): waiting for Redis would wait for ever, health NOT_SERVING; the start fails instead."""
    spoil(redis_url)
    service = AtpService(make_config(estate=write_estate(tmp_path), redis_timeout_s=0.5), redis_url)
    try:
        with pytest.raises(StartupError, match=r"^redis_url: .*refused a start-up command: WRONGTYPE"):
            await asyncio.wait_for(service.start(), 30)
    finally:
        await service.stop()


async def test_nothing_is_answered_and_no_estate_reloaded_before_the_start_is_done(
        redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path) -> None:
    """While the start waits for Redis to create the input streams' group, calls are refused
    RECOVERING (as health says NOT_SERVING) and an estate reload is refused: the channel desk may
    still be loading its feeds."""
    async with waiting_at_the_proxy(redis_server, tmp_path, b"XGROUP") as (service, starting, proxy):
        async with AtpClient(f"127.0.0.1:{service.port}") as client:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.availability([("sku-a", "store-1")])
        assert said(refused.value) == (grpc.StatusCode.UNAVAILABLE, "RECOVERING")
        with pytest.raises(Unavailable, match="recovering its state; retry") as too_early:
            await service.reload_estate()
        assert too_early.value.reason is Reason.RECOVERING
        proxy.hold()
        proxy.drop()
        await asyncio.wait_for(starting, 30)
        assert await service.reload_estate() is not None  # once it serves


@pytest.mark.parametrize("marker", [b"HSETNX", b"CONFIG", LogStore._CLAIM.sha.encode(), b"XRANGE"],
                         ids=["keyspace check", "persistence check", "claim", "recovery"])
async def test_redis_lost_while_claiming_and_recovering_delays_the_start_instead_of_failing_it(
        redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path, marker: bytes) -> None:
    """Redis answered the first PING, then stopped answering (a blip, a failover behind its address)
    while the start checked the keyspace, claimed it or read a shard's log: the start waits,
    health NOT_SERVING, and goes on once Redis answers. It failed the start (exit status 1), or
    (CONFIG GET unanswered) skipped the check of Redis's eviction policy."""
    async with waiting_at_the_proxy(redis_server, tmp_path, marker) as (service, starting, proxy):
        assert not starting.done() and service.engine is None
        assert (await health(service.port))[0] == 1  # NOT_SERVING
        proxy.hold()
        proxy.drop()
        await asyncio.wait_for(starting, 30)
        assert (await health(service.port))[0] == 0


async def test_a_claim_no_replica_confirms_waits_for_the_replicas_instead_of_failing_the_start(
        tmp_path: Path) -> None:
    """``redis_wait_replicas = 1`` and the replica away (restarting, resyncing) as the service starts:
    its claim lands on the primary unconfirmed (``NotReplicated``). The start waits for the
    replica, health NOT_SERVING, then serves. It failed the start (exit status 1)."""
    primary = EmbeddedRedis(tmp_path / "primary").start()
    replica = EmbeddedRedis(tmp_path / "replica", extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
    service = AtpService(make_config(redis_wait_replicas=1, redis_wait_timeout_ms=100, redis_timeout_s=1.0),
                         primary.url)
    try:
        async with starting_until_logged(service, "NOT REPLICATED") as starting:
            assert not starting.done() and (await health(service.port))[0] == 1  # NOT_SERVING
            replica.start()
            await asyncio.wait_for(starting, 30)
            assert (await health(service.port))[0] == 0
    finally:
        await service.stop(grace_s=0)
        replica.stop()
        primary.stop()


@pytest.mark.parametrize("marker", [b"MGET", b"XRANGE"], ids=["routes", "a group's recovery"])
async def test_redis_lost_while_taking_the_first_groups_delays_a_leased_start_instead_of_failing_it(
        redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path, marker: bytes) -> None:
    """``ownership = leases``: the start reads who owns what and takes (and recovers) its first share
    of the groups; Redis not answering there is waited out as at every other step of the start,
    health NOT_SERVING. It failed the start (exit status 1)."""
    async with waiting_at_the_proxy(redis_server, tmp_path, marker, ownership="leases", estate=None,
                                    port=held_port()) as (service, starting, proxy):
        assert not starting.done() and (await health(service.port))[0] == 1  # NOT_SERVING
        proxy.hold()
        proxy.drop()
        await asyncio.wait_for(starting, 30)
        assert (await health(service.port))[0] == 0
        assert service.membership is not None and len(service.membership.leases.held) == 4  # every group
