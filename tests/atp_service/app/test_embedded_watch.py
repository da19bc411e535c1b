"""``EmbeddedRedisWatch`` on a real redis-server: an exit is noticed without polling, Redis is
started again (counted), a stop gives a restart under way up, and too many exits end the watch."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
import redis.asyncio
from prometheus_client import CollectorRegistry

from atp_service.app.embedded_watch import EmbeddedRedisFailed, EmbeddedRedisWatch, _how_it_ended
from atp_service.instruments import Counter
from atp_service.storage import DataDirInUse
from atp_service.storage.embedded_redis import EmbeddedRedis
from tests.atp_service.storage.test_embedded_redis import SLOW_LOAD, populated
from tests.waiting import until


class Restarts:
    """A restart counter on a registry of its own, read back as a scrape would."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.counter = Counter("t_restarts_total", "restarts", registry=self.registry)

    def value(self) -> float:
        return self.registry.get_sample_value("t_restarts_total") or 0.0


async def killed(embedded: EmbeddedRedis) -> None:
    assert embedded.process is not None
    os.kill(embedded.process.pid, signal.SIGKILL)


def _in_aof(embedded: EmbeddedRedis, data: bytes) -> bool:
    return any(data in path.read_bytes() for path in embedded.data_dir.rglob("*.aof"))


async def test_a_killed_redis_is_started_again_then_too_many_exits_end_the_watch(tmp_path: Path) -> None:
    embedded = EmbeddedRedis(tmp_path / "data", unix_socket=True).start()
    counter = Restarts()
    watch = EmbeddedRedisWatch(embedded, restarts=1, load_timeout_s=60, counter=counter.counter)
    watching = asyncio.create_task(watch.run())
    try:
        client = redis.asyncio.Redis.from_url(embedded.local_url)
        await client.set("kept", "1")
        # In the AOF's file, it outlives a kill -9 (the page cache is the OS's): waited for, not slept on
        # (appendfsync everysec postpones the write while a slow disk's fsync runs, up to 2 s).
        await until(lambda: _in_aof(embedded, b"kept"), "the write in the append-only file")
        first = embedded.process
        await killed(embedded)
        await until(lambda: embedded.process is not first and counter.value() == 1, "started again", 60)
        async with asyncio.timeout(60):
            while True:  # answering again, on the same socket
                try:
                    assert await client.get("kept") == b"1"
                    break
                except redis.ConnectionError:
                    await asyncio.sleep(0.05)
        assert not watching.done()
        await killed(embedded)
        with pytest.raises(EmbeddedRedisFailed, match=r"2 exits within 600s, more than redis_restarts=1"):
            await asyncio.wait_for(watching, 30)
        assert counter.value() == 1
        await client.aclose()
    finally:
        watching.cancel()
        embedded.stop()


async def test_a_stop_gives_up_a_restart_under_way(tmp_path: Path) -> None:
    """The service stops while its Redis loads again: the restart gives up at once (its Redis
    stopped), instead of holding the stop until the load ends."""
    embedded = EmbeddedRedis(populated(tmp_path / "data", 10_000)).start()
    watch = EmbeddedRedisWatch(embedded, restarts=5, load_timeout_s=600, counter=Restarts().counter)
    watching = asyncio.create_task(watch.run())
    try:
        first = embedded.process
        embedded.extra_args = list(SLOW_LOAD)  # the restart loads slowly (5 s or more); the first start need not
        await killed(embedded)
        await until(lambda: embedded.process is not first, "a restart under way (loading, slowly)", 30)
        watch.abandon()
        await asyncio.wait_for(watching, 10)  # ends by itself, no cancellation needed
        assert embedded.process is not None and embedded.process.poll() is not None
    finally:
        watching.cancel()
        embedded.stop()


async def test_a_restart_that_fails_ends_the_watch_and_keeps_the_data_directory(tmp_path: Path) -> None:
    """The service still runs (it stops, exit status 5): no other service may take its data
    directory meanwhile."""
    embedded = EmbeddedRedis(tmp_path / "data").start()
    watch = EmbeddedRedisWatch(embedded, restarts=3, load_timeout_s=60, counter=Restarts().counter)
    watching = asyncio.create_task(watch.run())
    try:
        embedded.extra_args = ["--no-such-directive", "yes"]  # the next start exits at once
        await killed(embedded)
        with pytest.raises(EmbeddedRedisFailed, match="could not be started again: redis-server exited with 1"):
            await asyncio.wait_for(watching, 30)
        with pytest.raises(DataDirInUse):
            EmbeddedRedis(tmp_path / "data").start()
    finally:
        watching.cancel()
        embedded.stop()
    EmbeddedRedis(tmp_path / "data").start().stop()  # its own stop lets go of it


async def test_a_fault_of_the_watch_itself_ends_it_as_a_failure(tmp_path: Path) -> None:
    never_started = EmbeddedRedis(tmp_path / "data")
    with pytest.raises(EmbeddedRedisFailed, match="can no longer be watched"):
        await EmbeddedRedisWatch(never_started, restarts=3, load_timeout_s=60, counter=Restarts().counter).run()


def test_how_an_exit_is_told() -> None:
    assert _how_it_ended(-9) == "was killed by SIGKILL"
    assert _how_it_ended(-36) == "was killed by signal 36"  # a realtime signal: no name in Python
    assert _how_it_ended(1) == "exited with status 1"


@pytest.mark.parametrize(("sources", "named"), [
    (None, "ATP_REDIS_LOAD_TIMEOUT_S"),
    ({"redis_load_timeout_s": "env ATP_REDIS_LOAD_TIMEOUT_S"}, "ATP_REDIS_LOAD_TIMEOUT_S"),
    ({"redis_load_timeout_s": "flag --redis-load-timeout-s"}, "--redis-load-timeout-s"),
])
async def test_a_restart_still_loading_past_its_bound_names_the_setting_as_given(
        tmp_path: Path, sources: dict[str, str] | None, named: str) -> None:
    """Restarted after a crash, the embedded Redis reloads its append-only file: past ``redis_load_timeout_s`` the
    service stops (exit status 5) saying how to allow longer. Its start's refusal names the setting as the operator
    gave it (``as_given``, bacf94df); a restart's said the field alone, ``allow longer with redis_load_timeout_s``,
    which no flag nor variable is called (it said ``(ATP_REDIS_LOAD_TIMEOUT_S)`` before)."""
    embedded = EmbeddedRedis(populated(tmp_path / "data", 4_000)).start()
    watch = (EmbeddedRedisWatch(embedded, restarts=5, load_timeout_s=0.3, counter=Restarts().counter)
             if sources is None else
             EmbeddedRedisWatch(embedded, restarts=5, load_timeout_s=0.3, counter=Restarts().counter, sources=sources))
    watching = asyncio.create_task(watch.run())
    try:
        embedded.extra_args = list(SLOW_LOAD)  # the restart loads 2 s or more: past its bound
        await killed(embedded)
        with pytest.raises(EmbeddedRedisFailed) as failed:
            await asyncio.wait_for(watching, 60)
    finally:
        watching.cancel()
        embedded.stop()
    said = str(failed.value)
    assert "could not be started again" in said and "still loading its append-only file after 0.3s" in said, said
    assert f"allow longer with {named};" in said and "redis_load_timeout_s" not in said.replace(str(tmp_path), ""), \
        said
