"""A client whose service went away (killed, restarted, failed over) reaches it again within ``reconnect_max_s``
of its being back, however long it was gone: gRPC's own wait between connection attempts grows to 120 s."""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atp_client import AtpClient, RoutedClient, reconnect_options
from atp_client._channel import RECONNECT_MAX_S
from tests.ports import held_port
from tests.waiting import until

BOUND_S = 0.2
"""The bound the tests set: a tenth of the gap gRPC's own backoff reaches by its third wait (``GRPC_THIRD_GAP_S``)."""
GRPC_THIRD_GAP_S = 1.0 * 1.6 ** 2 * 0.8
"""The least gRPC's default backoff waits before its fourth attempt: 1 s grown x1.6 twice, jittered down by 20 %
at most (grpcio's ``BackOff``: initial 1 s, multiplier 1.6, jitter 0.2, max 120 s)."""


class Attempts:
    """A real listener counting each connection made to it, and closing it at once (no HTTP/2 answered): every
    attempt of a client fails as one to a service that is down does, and its time is kept."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        async def on(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.times.append(time.monotonic())
            writer.close()
        self.server = await asyncio.start_server(on, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def gaps(self) -> list[float]:
        return [later - earlier for earlier, later in zip(self.times, self.times[1:], strict=False)]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_a_client_tries_again_within_its_bound_however_long_the_service_is_down() -> None:
    """gRPC's default waits 0.8-1.2 s, then 1.28-1.92 s, then at least 2.05 s (``GRPC_THIRD_GAP_S``) and on up to
    120 s: a client whose service stayed down reached it that long after it was back. The gaps between attempts
    here stay within ``BOUND_S`` (0.2 s, jittered up to 0.24 s) for six gaps — past the third, where gRPC's own
    is at least 2.05 s. It cannot pass by luck: gRPC's third wait is never shorter than 2.05 s, and load only
    makes gaps longer. Nor fail by load: it takes a stall of over 1.7 s between two attempts."""
    attempts = Attempts()
    target = await attempts.start()
    async with AtpClient(target, reconnect_max_s=BOUND_S) as client:
        client.channel.get_state(try_to_connect=True)
        await until(lambda: len(attempts.times) >= 7 or any(g >= GRPC_THIRD_GAP_S for g in attempts.gaps()),
                    "seven connection attempts (or a gap as gRPC's default's)", 30)
    await attempts.stop()
    gaps = attempts.gaps()
    assert max(gaps) < GRPC_THIRD_GAP_S, f"gaps between connection attempts: {[round(g, 2) for g in gaps]}"


def test_the_bound_is_every_clients_default_and_given_to_grpc() -> None:
    """1 s: a service back is reached within about a second; never shorter by default (thousands of clients
    of one restarting process), jittered by gRPC. The first wait is gRPC's own (1 s), or the bound if shorter."""
    assert 0.5 <= RECONNECT_MAX_S <= 2.0
    for client in (AtpClient, RoutedClient):
        assert inspect.signature(client).parameters["reconnect_max_s"].default == RECONNECT_MAX_S
    assert dict(reconnect_options()) == {"grpc.initial_reconnect_backoff_ms": 1000,
                                         "grpc.max_reconnect_backoff_ms": 1000}
    assert dict(reconnect_options(0.2)) == {"grpc.initial_reconnect_backoff_ms": 200,
                                            "grpc.max_reconnect_backoff_ms": 200}
    assert dict(reconnect_options(30)) == {"grpc.initial_reconnect_backoff_ms": 1000,
                                           "grpc.max_reconnect_backoff_ms": 30_000}
    # gRPC's connection timeout: a short one gives up the handshake of a busy process starting
    assert "grpc.min_reconnect_backoff_ms" not in dict(reconnect_options(0.01))


def test_the_callers_own_options_win() -> None:
    """Key by key; a caller's maximum alone also bounds the first wait (gRPC takes the first as given)."""
    assert reconnect_options(0.2, [("grpc.max_reconnect_backoff_ms", 5000)]) == [
        ("grpc.initial_reconnect_backoff_ms", 200)]
    assert reconnect_options(5, [("grpc.max_reconnect_backoff_ms", 300)]) == [
        ("grpc.initial_reconnect_backoff_ms", 300)]
    assert reconnect_options(0.2, [("grpc.initial_reconnect_backoff_ms", 50)]) == [
        ("grpc.max_reconnect_backoff_ms", 200)]


@pytest.mark.parametrize("value", [0, -1, 0.001, math.nan, math.inf, 3601, "1"])
def test_a_bound_out_of_range_is_refused_naming_it(value: object) -> None:
    for make in (lambda: AtpClient("127.0.0.1:1", reconnect_max_s=value),  # type: ignore[arg-type]
                 lambda: RoutedClient("127.0.0.1:1", reconnect_max_s=value),  # type: ignore[arg-type]
                 lambda: reconnect_options(value)):  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"^reconnect_max_s: must be a number of seconds within \[0.01, 3600\]"):
            make()


def spawn(redis_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "atp_service", "serve", "--redis-url", redis_url, "--port", str(port),
           "--metrics-port", "-1", "--no-demo", "--auth", "off", "--shards", "2"]
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
async def test_a_client_reaches_a_service_killed_and_restarted_within_its_bound(redis_url: str,
                                                                                  tmp_path: Path) -> None:
    """kill -9, and the client asking on (``wait_ready``: as an OMS sending orders would, each call refused at once)
    while the service is down — ``DOWN_S`` and its replacement's start: seconds, gRPC's own wait grown past 2 s —,
    then serving again: the client is answered within 2 s of a fresh client's first answer, its bound being 0.2 s.
    The margin is ten times the bound: no load makes it fail. (A client on gRPC's default may pass this by the luck
    of its next attempt falling in those 2 s: the gaps' test above is the one that cannot.)"""
    port = held_port()
    proc = spawn(redis_url, port, tmp_path / "service.log")
    client = AtpClient(f"127.0.0.1:{port}", timeout_s=5, reconnect_max_s=BOUND_S)
    try:
        await client.wait_ready(60)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        asking = asyncio.ensure_future(client.wait_ready(120))  # every attempt refused while the service is down
        await asyncio.sleep(DOWN_S)  # an outage, not an assertion: gRPC's own wait would be past 2 s by now
        assert not asking.done(), asking
        proc = spawn(redis_url, port, tmp_path / "service.log")
        async with AtpClient(f"127.0.0.1:{port}", timeout_s=5, reconnect_max_s=0.05) as fresh:
            await fresh.wait_ready(60)
        await until(asking.done, "the client that kept asking answered SERVING within 2 s", 2.0)
        await asking
        assert [p.sku for p in await client.availability([("K", "DC")])] == ["K"]
    finally:
        await client.close()
        proc.terminate()
        await asyncio.to_thread(proc.wait, 20)


DOWN_S = 3.0
"""How long the service stays down before its replacement is started."""
