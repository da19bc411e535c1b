"""``EmbeddedRedis.start`` waits for a Redis that is slow to answer, within its bound, and for one
that is slow to load its append-only file, within another, saying how far it is.

A slow start is made deterministic with a stand-in ``redis-server`` first on PATH: it listens on the
given port and accepts connections but never answers, so every PING times out (redis-py 8's
``TimeoutError``, which is not a ``ConnectionError``). A slow load is the real redis-server with its
``key-load-delay`` (a pause per key loaded, which Redis's own tests use) over a populated AOF.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from atp_service.config import ServiceConfig
from atp_service.config_settings import as_given
from atp_service.storage import embedded_redis
from atp_service.storage.embedded_redis import EmbeddedRedis, RedisDidNotStart, StartAbandoned

SILENT_REDIS = """\
import pathlib, socket, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
log = pathlib.Path(sys.argv[sys.argv.index("--logfile") + 1])
server = socket.create_server(("127.0.0.1", port))
held = []
while True:
    conn, _ = server.accept()
    held.append(conn)  # accepted and never answered
    with log.open("a") as out:
        out.write("accepted\\n")
"""


@pytest.fixture
def silent_redis_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "redis-server"
    fake.write_text(f"#!{sys.executable}\n{SILENT_REDIS}")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.usefixtures("silent_redis_on_path")
def test_a_redis_that_does_not_answer_is_retried_until_the_bound_then_named(tmp_path: Path) -> None:
    embedded = EmbeddedRedis(tmp_path / "data")
    log = (tmp_path / "data" / "redis.log").resolve()
    try:
        with pytest.raises(RedisDidNotStart) as err:
            embedded.start(timeout_s=3.0, ping_timeout_s=0.1)
        assert str(err.value) == (f"redis-server on 127.0.0.1:{embedded.port} did not answer PING within 3.0s; "
                                  f"see {log}")
        # A timed-out PING was retried like a refused connection, not taken as the end of the wait.
        assert log.read_text().count("accepted") >= 2
        assert embedded.process is not None and embedded.process.poll() is not None  # not left running
    finally:
        embedded.stop()


def test_the_unix_socket_answers_and_only_its_owner_may_use_it(tmp_path: Path) -> None:
    embedded = EmbeddedRedis(tmp_path / "data", unix_socket=True)
    try:
        embedded.start()
        assert embedded.socket_path == (tmp_path / "data" / "redis.sock").resolve()
        assert embedded.local_url == embedded.unix_url == f"unix://{embedded.socket_path}?db=0"
        assert stat.S_ISSOCK(embedded.socket_path.stat().st_mode)
        assert stat.S_IMODE(embedded.socket_path.stat().st_mode) == 0o700
        with redis.Redis.from_url(embedded.local_url) as over_socket, redis.Redis.from_url(embedded.url) as over_tcp:
            over_socket.set("k", "same server")
            assert over_tcp.get("k") == b"same server"
            assert "U" in over_socket.client_info()["flags"]  # Redis's mark of a unix-socket client
    finally:
        embedded.stop()


def test_a_password_goes_with_the_unix_socket_url(tmp_path: Path) -> None:
    embedded = EmbeddedRedis(tmp_path / "data", unix_socket=True, password="s3cret")
    try:
        embedded.start()
        assert embedded.local_url == f"unix://:s3cret@{embedded.socket_path}?db=0"
        with redis.Redis.from_url(embedded.local_url) as client:
            assert client.ping()
        with redis.Redis(unix_socket_path=str(embedded.socket_path)) as anonymous, \
                pytest.raises(redis.AuthenticationError):
            anonymous.ping()
    finally:
        embedded.stop()


def test_a_password_is_kept_off_the_command_line_and_read_whole_whatever_it_holds(tmp_path: Path) -> None:
    """On redis-server's command line a password is readable by every user of the host (``ps``); in
    the owner-only config file it is not, and quotes, backslashes, spaces or a newline in it do not
    end it early or add a setting of their own."""
    password = 'pw-7f3a "b" \\c d\nport 1 #é'
    embedded = EmbeddedRedis(tmp_path / "data", password=password)
    try:
        embedded.start()
        assert not any("pw-7f3a" in arg for arg in embedded._args())  # what redis-server is started with
        assert stat.S_IMODE((tmp_path / "data" / "redis-auth.conf").stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "data" / "redis.url").stat().st_mode) == 0o600
        with redis.Redis(port=embedded.port, password=password) as client:
            assert client.ping()
        with redis.Redis(port=embedded.port) as anonymous, pytest.raises(redis.AuthenticationError):
            anonymous.ping()
    finally:
        embedded.stop()


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
def test_redis_cli_is_let_in_with_the_url_file(tmp_path: Path) -> None:
    """The embedded Redis has a new port and password at each start: an operator reaches it with
    ``redis-cli -u "$(cat var/redis/redis.url)"`` (README, OPERATIONS.md). redis-cli 7.0 took the empty
    user of ``redis://:PASSWORD@`` for a user named "", was refused, and sent the command unauthenticated."""
    embedded = EmbeddedRedis(tmp_path / "data", password="s3cret-pw_0")
    try:
        embedded.start()
        url = (tmp_path / "data" / "redis.url").read_text().strip()
        told = subprocess.run(["redis-cli", "--no-auth-warning", "-u", url, "XADD", "atp:in:pos", "*", "e", "1"],
                              capture_output=True, text=True, timeout=10)
        assert told.returncode == 0, told.stderr
        with redis.Redis.from_url(url) as client:  # atp-publisher's and atpctl's way in, the same file
            assert client.xlen("atp:in:pos") == 1, told.stdout + told.stderr
    finally:
        embedded.stop()


def test_a_data_dir_too_deep_for_a_socket_path_uses_tcp_alone(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    embedded = EmbeddedRedis(deep, unix_socket=True)
    assert embedded.socket_path is None and embedded.unix_url is None
    assert embedded.local_url == embedded.url
    assert EmbeddedRedis(tmp_path / "data").local_url.startswith("redis://127.0.0.1:")  # not asked for one


@pytest.mark.parametrize("name", ["run#1", "50%41", "what?"])
def test_a_data_dir_whose_name_means_something_in_a_url_still_reaches_its_socket(tmp_path: Path, name: str) -> None:
    embedded = EmbeddedRedis(tmp_path / name, unix_socket=True, password="p@ss:w/rd")
    assert embedded.socket_path is not None
    try:
        embedded.start(timeout_s=5.0)
        with redis.Redis.from_url(embedded.local_url) as client:
            assert client.connection_pool.connection_kwargs["path"] == str(embedded.socket_path)
            assert client.ping()
    finally:
        embedded.stop()


def populated(data_dir: Path, keys: int) -> Path:
    """``data_dir`` with an append-only file of ``keys`` keys (in its RDB base: ``DEBUG POPULATE``
    is not logged, a rewrite takes it in)."""
    with EmbeddedRedis(data_dir, extra_args=["--enable-debug-command", "local"]) as embedded:
        client = redis.Redis.from_url(embedded.url)
        client.execute_command("DEBUG", "POPULATE", keys, "k", 8)  # type: ignore[no-untyped-call]
        client.bgrewriteaof()
        deadline = time.monotonic() + 30
        while any(int(client.info("persistence")[field]) for field in ("aof_rewrite_in_progress",
                                                                        "aof_rewrite_scheduled")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        client.close()
    return data_dir


SLOW_LOAD = ["--key-load-delay", "500", "--loading-process-events-interval-bytes", "1024"]
"""500 µs per key loaded: 10,000 keys take 5 s or more to load; and answering clients every kB
loaded (2 MB by default: a large AOF's pace, not a small one's)."""


def test_a_load_longer_than_the_answer_bound_is_waited_for_and_its_progress_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    embedded = EmbeddedRedis(populated(tmp_path / "data", 10_000), extra_args=SLOW_LOAD)
    with caplog.at_level(logging.INFO, "atp_service.storage.embedded_redis"):
        began = time.monotonic()
        embedded.start(timeout_s=2.0)
    try:
        assert time.monotonic() - began > 2.0  # it loaded past the bound on a first answer
        assert redis.Redis.from_url(embedded.url).dbsize() == 10_000
        assert "embedded redis-server is loading its append-only file: " in caplog.text
    finally:
        embedded.stop()


def test_a_load_past_its_own_bound_fails_the_start_naming_the_setting(tmp_path: Path) -> None:
    embedded = EmbeddedRedis(populated(tmp_path / "data", 10_000), extra_args=SLOW_LOAD)
    try:
        with pytest.raises(RedisDidNotStart) as err:
            embedded.start(load_timeout_s=0.3)
        assert "still loading its append-only file after 0.3s" in str(err.value)
        # Named as the operator gave it (atp-service's refusal: as_given), not both ways whatever was given.
        said = {source: as_given(str(err.value), ServiceConfig, {"redis_load_timeout_s": source})
                for source in ("default", "env ATP_REDIS_LOAD_TIMEOUT_S", "flag --redis-load-timeout-s")}
        assert [text.count("allow longer with ATP_REDIS_LOAD_TIMEOUT_S;") for text in said.values()] == [1, 1, 0], said
        assert "allow longer with --redis-load-timeout-s;" in said["flag --redis-load-timeout-s"], said
        assert not any("redis_load_timeout_s" in text.replace(str(tmp_path), "") for text in said.values()), said
        assert embedded.process is not None and embedded.process.poll() is not None  # not left running
    finally:
        embedded.stop()


def test_an_abandoned_start_stops_redis_and_frees_the_data_directory(tmp_path: Path) -> None:
    data = populated(tmp_path / "data", 10_000)
    embedded = EmbeddedRedis(data, extra_args=SLOW_LOAD)
    asked: list[None] = []

    def abandon() -> bool:
        asked.append(None)
        return len(asked) > 3  # a few polls into the load

    try:
        with pytest.raises(StartAbandoned):
            embedded.start(abandon=abandon)
        assert embedded.process is not None and embedded.process.poll() is not None
        EmbeddedRedis(data).start().stop()  # the data directory's lock was let go
    finally:
        embedded.stop()


def test_a_hard_exit_while_a_restart_forks_redis_stops_the_child_being_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart runs in a worker thread; a second stop signal's hard exit (``kill_softly``) landing
    between its fork and its noting of the child found only the dead redis-server, and the new one
    outlived the service on the same data directory. It now waits for the child to be noted."""
    embedded = EmbeddedRedis(tmp_path / "redis").start()
    try:
        assert embedded.process is not None
        embedded.process.kill()  # exited on its own: the watch restarts it
        embedded.process.wait()
        forked, go_on = threading.Event(), threading.Event()
        made: list[subprocess.Popen[bytes]] = []
        real_popen = subprocess.Popen

        def forking_slowly(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
            made.append(real_popen(*args, **kwargs))
            forked.set()
            go_on.wait(10)  # the fork done, the child not yet noted: where the hard exit lands
            return made[-1]

        monkeypatch.setattr(embedded_redis.subprocess, "Popen", forking_slowly)
        def restarting() -> None:
            with contextlib.suppress(RedisDidNotStart):  # the hard exit ends the child it waited for
                embedded.start()

        restart = threading.Thread(target=restarting)
        restart.start()
        assert forked.wait(10)
        hard_exit = threading.Thread(target=embedded.kill_softly)
        hard_exit.start()
        hard_exit.join(0.5)  # it waits for the child to be noted (without that, it is done by now)
        go_on.set()
        hard_exit.join(10)
        restart.join(30)
        assert made[0].wait(10) is not None  # terminated, not left running
    finally:
        embedded.stop()


def test_a_hard_exit_removes_redis_url_naming_the_redis_it_stopped(tmp_path: Path) -> None:
    """A second stop signal's hard exit (``kill_softly``) terminates the embedded redis-server but left
    ``redis.url`` naming it: atpctl and atp-publisher, given no URL, then failed at a Redis gone (the next
    start's port and password are new). It is removed there too, as a clean ``stop`` removes it."""
    embedded = EmbeddedRedis(tmp_path / "redis").start()
    try:
        assert (tmp_path / "redis" / "redis.url").exists()
        assert embedded.process is not None
        embedded.kill_softly()
        assert embedded.process.wait(10) is not None  # terminated: the file would name nothing
        assert not (tmp_path / "redis" / "redis.url").exists()
    finally:
        embedded.stop()


def test_no_redis_server_is_forked_once_a_hard_exit_was_asked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hard exit landing while a restart is in ``start`` but not yet forking: the restart gives up
    instead of forking a redis-server the exiting process would leave behind."""
    embedded = EmbeddedRedis(tmp_path / "redis").start()
    made: list[subprocess.Popen[bytes]] = []
    try:
        assert embedded.process is not None
        embedded.process.kill()
        embedded.process.wait()
        in_start, go_on = threading.Event(), threading.Event()
        real_lock, real_popen = embedded._lock, subprocess.Popen

        def locking_slowly() -> None:
            in_start.set()
            go_on.wait(10)  # inside the restart's start, before its fork: where the hard exit lands
            real_lock()

        def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
            made.append(real_popen(*args, **kwargs))
            return made[-1]

        monkeypatch.setattr(embedded, "_lock", locking_slowly)
        monkeypatch.setattr(embedded_redis.subprocess, "Popen", popen)
        abandoned: list[BaseException] = []

        def restarting() -> None:
            try:
                embedded.start()
            except StartAbandoned as exc:
                abandoned.append(exc)

        restart = threading.Thread(target=restarting)
        restart.start()
        assert in_start.wait(10)
        embedded.kill_softly()
        go_on.set()
        restart.join(30)
        assert made == [] and len(abandoned) == 1
    finally:
        for proc in made:
            proc.terminate()
            proc.wait(10)
        embedded.stop()


def test_a_port_taken_after_it_was_picked_is_picked_again_and_a_given_one_is_not(tmp_path: Path) -> None:
    """A free port is free only when it is picked: another process took it before redis-server bound
    it, and the start failed (in the tests: every test sharing that Redis). A picked port is picked
    again; a port the operator gave is theirs to fix, so that start fails, naming the log."""
    import socket

    server = EmbeddedRedis(tmp_path / "picked")
    taken = server.port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        server.start()
        try:
            assert server.port != taken
            assert redis.Redis(port=server.port).ping()
        finally:
            server.stop()
        with pytest.raises(RedisDidNotStart, match="exited with 1"):
            EmbeddedRedis(tmp_path / "given", port=taken).start()


def test_a_bind_failure_an_earlier_run_logged_does_not_make_another_failure_retried(tmp_path: Path) -> None:
    """redis.log is kept across runs: a port taken in an earlier one is logged there for good. A start
    failing for its own reason (here a damaged AOF manifest; a load past its bound took as long each
    time) fails once, on the port it picked, and is not tried again on other ports."""
    data = tmp_path / "redis"
    (data / "appendonlydir").mkdir(parents=True)
    (data / "appendonlydir" / "appendonly.aof.manifest").write_text("not a manifest\n")
    (data / "redis.log").write_text("1:M 01 Jan 2026 00:00:00.000 # Warning: Could not create server TCP listening "
                                    "socket 127.0.0.1:41234: bind: Address already in use\n")
    server = EmbeddedRedis(data)
    picked = server.port
    with pytest.raises(RedisDidNotStart, match="exited with 1"):
        server.start()
    assert server.port == picked
    assert (data / "redis.log").read_text().count("Invalid AOF manifest") == 1


CUT_SHORT = """\
import resource, signal, sys
from pathlib import Path
from atp_service.storage.embedded_redis import _owner_only
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the bound fails (EFBIG), as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (16, resource.RLIM_INFINITY))
try:
    _owner_only(Path(sys.argv[1]), "redis://:" + "n" * 43 + "@127.0.0.1:40001/0\\n")
except OSError as exc:
    print(exc.errno)
"""


def test_a_rewrite_of_redis_url_that_fails_part_way_leaves_the_last_one_whole(tmp_path: Path) -> None:
    """Each start (a restart in place too) writes ``redis.url`` again. Written in place, a write that
    failed part way (a full disk) left it cut short, and a reader meanwhile found it empty or half
    written: atp-publisher, starting then, read no URL, or a password cut short. Written beside it
    and renamed into place, it is the last whole one or the new whole one, and nothing is left over."""
    url = tmp_path / "redis.url"
    url.write_text("redis://:old@127.0.0.1:40000/0\n")
    done = subprocess.run([sys.executable, "-c", CUT_SHORT, str(url)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, check=True)
    assert done.stdout.strip() == "27"  # EFBIG: the write failed part way
    assert url.read_text() == "redis://:old@127.0.0.1:40000/0\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["redis.url"]


def test_the_data_directory_is_its_owners_alone_whatever_the_umask(tmp_path: Path) -> None:
    """The AOF holds every reservation and fact: under a umask of 022 it was readable by every user of
    the host (mode 644 in a 755 directory)."""
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    with EmbeddedRedis(data):
        assert stat.S_IMODE(data.stat().st_mode) == 0o700


def test_another_redis_answering_on_the_port_is_not_taken_for_the_one_started(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A picked port may be taken by another process's redis-server before this one binds it (two
    test workers, each starting a cluster): until this one exits, the other answers there. Its PONG
    is not this start's readiness — its keys and cluster state are another's. Here this start's
    redis-server never binds nor exits (a stand-in that sleeps), so only the check of whose process
    answers tells them apart: the start fails at its bound, naming the taken port."""
    other = EmbeddedRedis(tmp_path / "other").start()
    try:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        sleeper = bin_dir / "redis-server"
        sleeper.write_text("#!/bin/sh\nexec sleep 60\n")
        sleeper.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        mine = EmbeddedRedis(tmp_path / "mine", port=other.port)
        try:
            with pytest.raises(RedisDidNotStart, match=f"127.0.0.1:{other.port} is answered by another redis-server"):
                mine.start(timeout_s=1.0, ping_timeout_s=0.2)
            assert redis.Redis(port=other.port).ping()  # the other one was left alone
        finally:
            mine.stop()
    finally:
        other.stop()
