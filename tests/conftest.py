"""Shared fixtures: a real redis-server per test session, a real gRPC service per test."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_timeout
import redis

from atp_client import AtpClient
from atp_service import AtpService, EmbeddedRedis, ManualClock, ServiceConfig
from atp_service.engine.clock import Clock
from atp_service.storage.embedded_cluster import EmbeddedCluster
from atp_service.tasks import task_stacks
from reservation import Limits
from tests.ports import release_ports
from tests.slot_moves import SlotMove

# gRPC's asyncio layer shuts its global completion queue down when the last server or channel is
# collected, joining its poller thread; a server collected while still running (its test failed
# before stopping it, its loop closed) leaves calls pending there and that join never returns: the
# run (a pytest-xdist worker) hangs at exit for ever (grpc/grpc#22365). This reference, never
# given back, keeps the queue up until the process exits. Outside any loop: it anchors none.
grpc.aio.init_grpc_aio()  # type: ignore[attr-defined]  # exported, missing from the stubs


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish() -> None:
    """The tests' garbage collected here, before the summary: a collection running finalizers (gRPC's
    and asyncio's objects in cycles) inside the AST constructor of a module pytest rewrites late (the
    hypothesis plugin's import at the summary) fails CPython 3.11 with a SystemError, and the run with it."""
    gc.collect()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport() -> Iterator[None]:
    """No collection while a report is made: a failing test's report parses its source (pytest's
    traceback), and a collection there — a failed test leaves gRPC's and asyncio's objects in cycles,
    whose finalizers run Python — fails CPython 3.11's AST constructor with a SystemError ("recursion
    depth mismatch"), an internal error that ended the whole run, every later test unrun."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@pytest.hookimpl(trylast=True)
def pytest_exception_interact(node: pytest.Item | pytest.Collector) -> None:
    """pytest-timeout's timer re-armed after a failure: pytest-timeout stops it there (for a debugger), so a
    teardown that then hung — servers left running, a task deaf to its cancel — ran until CI's own limit
    instead of ending as this test's timeout (stacks dumped, the worker restarted, the test named)."""
    if not isinstance(node, pytest.Item) or node.config.getoption("usepdb"):
        return
    settings = pytest_timeout._get_item_settings(node)  # the one reader of the timeout's marker and ini
    if settings.timeout and not settings.func_only:
        node.config.pluginmanager.hook.pytest_timeout_set_timer(item=node, settings=settings)


LONGEST_FIRST = (
    "tests/sim/test_simulation.py", "tests/atp_service/app/test_cli.py", "tests/sim/test_seeds_second.py",
    "tests/benchmarks/test_peak_smoke.py", "tests/sim/test_seeds_first.py",
    "tests/atp_service/app/test_membership_fuzz.py", "tests/atp_service/app/test_process_order_holds.py",
    "tests/reservation/test_load_order.py",
    "tests/benchmarks/test_scale.py", "tests/sim/test_full.py", "tests/publishers/test_publisher_trimmed.py",
    "tests/sim/test_groups.py", "tests/atp_service/app/test_redis_stalls.py", "tests/sim/test_settlefaults.py",
    "tests/atp_service/app/test_faults.py", "tests/sim/test_every_fault.py", "tests/benchmarks/test_fault_soak.py",
    "tests/sim/test_shed.py", "tests/atp_service/app/test_processes_streams.py",
    "tests/reservation/test_reserve_fast_path.py", "tests/sim/test_facttimes.py", "tests/sim/test_partition.py",
)
"""The suite's longest files (a quarter to several minutes each on a busy 2-core host; ``--durations``), longest
first, the simulation's (all CPU) between files that mostly wait on processes and Redis: three workers on the three
simulation files at once on two cores took seed chunks past their timeout on a loaded host. pytest-xdist hands out
whole files in collection order (``make test``: ``--dist loadfile --no-loadscope-reorder``). In path order the
simulation's came last (``-n 2``: minutes of one worker alone at the end); in xdist's own order (most tests first)
the long files of one to three tests did. A file out of date here costs time only, never a test."""


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files of ``LONGEST_FIRST`` first, in its order; every other file after, in its order (a stable sort)."""
    rank = {path: place for place, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


SPAWNED: list[subprocess.Popen[bytes]] = []
"""Service processes a test started (``spawned``): any still running after the test is killed."""


def spawned(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    SPAWNED.append(proc)
    return proc


@pytest.fixture(autouse=True)
def no_service_left_running() -> Iterator[None]:
    """A test that fails before stopping its subprocess service must not leave it running (an
    orphan busy against a Redis that is gone skews every later test and benchmark)."""
    yield
    while SPAWNED:
        proc = SPAWNED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(autouse=True)
def ports_given_back() -> Iterator[None]:
    """The ports this test held for its servers (``held_port``) are let go once they are stopped."""
    yield
    release_ports()


REAPERS: list[subprocess.Popen[bytes]] = []
"""This process's reaper (``reaper``): kept, never waited for — it outlives this process on purpose."""


@pytest.fixture(scope="session", autouse=True)
def reaper(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Whatever this run starts under its temporary directory (a redis-server in a session of its
    own) is killed once this process is gone, however it goes (``tests/reaper.py``): the pipe's
    write end, never inherited by what this run starts, is held until this process exits."""
    read, _write = os.pipe()
    REAPERS.append(subprocess.Popen([sys.executable, "-m", "tests.reaper", str(tmp_path_factory.getbasetemp())],
                                    stdin=read, start_new_session=True, cwd=Path(__file__).parent.parent))
    os.close(read)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendfsync="always").start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """A clean keyspace for every test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """A real Redis Cluster on loopback: 3 primaries, each with a replica in sync."""
    with EmbeddedCluster(tmp_path_factory.mktemp("cluster"), primaries=3, replicas=1, sync_delay_s=0) as cluster:
        yield cluster


@pytest.fixture
def cluster_url(redis_cluster: EmbeddedCluster) -> str:
    """A clean keyspace on the cluster for every test (every primary flushed)."""
    for node in redis_cluster.primaries:
        with redis.Redis(host="127.0.0.1", port=node.port) as client:
            client.flushall()
    return redis_cluster.url


@pytest.fixture
def moves(redis_cluster: EmbeddedCluster) -> Iterator[list[SlotMove]]:
    """Slot moves begun by a test, finished after it whatever happened: the cluster is shared."""
    begun: list[SlotMove] = []
    yield begun
    for move in begun:
        move.finish()


def test_config(**overrides: Any) -> ServiceConfig:
    base = ServiceConfig(port=0, metrics_port=-1, shards=4, demo=False, auth="off", maintenance_interval_ms=20,
                         shutdown_grace_s=0.5, limits=Limits())
    return replace(base, **overrides)


ServiceFactory = Callable[..., Awaitable[tuple[AtpService, AtpClient]]]


@pytest.fixture
async def start_service(redis_url: str) -> AsyncIterator[ServiceFactory]:
    """Start (and at the end stop) services against the test's Redis. Returns (service, client)."""
    async with services_on(redis_url) as start:
        yield start


@contextlib.asynccontextmanager
async def services_on(redis_url: str, **base: Any) -> AsyncIterator[ServiceFactory]:
    """``async with services_on(url) as start``: a ``ServiceFactory`` of services on ``redis_url`` with
    ``base`` settings, each stopped when the block ends, however it ends. An assertion failing inside
    must still stop them: a service left running (once a loop, whose unfinished generator was never
    resumed) kept its ingest task reading, its cancellation swallowed by redis-py at the loop's close,
    and the test hung there, past pytest-timeout (stopped at the failure), until CI's own limit."""
    running: list[tuple[AtpService, AtpClient | None]] = []

    async def start(clock: Clock | None = None, **overrides: Any) -> tuple[AtpService, AtpClient]:
        service = AtpService(test_config(**{**base, **overrides}), redis_url, clock=clock)
        running.append((service, None))  # stopped after even if its start fails half-way
        await service.start()
        client = AtpClient(f"127.0.0.1:{service.port}")
        running[-1] = (service, client)
        return service, client

    try:
        yield start
    finally:
        await _stopped(running)


async def _stopped(running: list[tuple[AtpService, AtpClient | None]]) -> None:
    """Every service of ``running`` stopped, each tried even if one before failed to stop; the first
    failure raised after."""
    failures: list[BaseException] = []
    for service, client in running:
        try:
            if client is not None:
                await client.close()
            try:
                await asyncio.wait_for(service.stop(grace_s=0.1), STOP_LIMIT_S)
            except TimeoutError:
                stacks = task_stacks(limit=6)
                raise AssertionError(f"service.stop() did not finish in {STOP_LIMIT_S}s; tasks:\n{stacks}") from None
        except Exception as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


STOP_LIMIT_S = 30


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def project_root() -> Path:
    return Path(__file__).resolve().parent.parent
