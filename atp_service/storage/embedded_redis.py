"""A private ``redis-server`` child process: the default store of ``make run`` and of the tests."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO
from urllib.parse import quote

import redis

log = logging.getLogger(__name__)

LOAD_PROGRESS_EVERY_S = 5.0
"""How often a start waiting for a long load of the append-only file says how far it is."""

_TERM_AGAIN_S = 0.2
"""How often a stop asks again a redis-server that refused its SIGTERM (writing its first AOF)."""


class RedisNotInstalled(RuntimeError):
    pass


class DataDirInUse(RuntimeError):
    pass


PORT_TRIES = 3
"""Starts on a freshly picked port when another process took the one picked before redis-server bound it."""


class RedisDidNotStart(RuntimeError):
    """redis-server exited, or did not answer in time; the message names the port or the log file."""


class StartAbandoned(RuntimeError):
    """The start was given up on the caller's word (a stop signal); redis-server was stopped."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    debian = Path("/usr/bin/redis-server")
    path = shutil.which("redis-server") or (str(debian) if debian.exists() else None)
    if path is None:
        raise RedisNotInstalled(
            "redis-server not found: install it (Debian: apt-get install redis-server) or set ATP_REDIS_URL"
        )
    return path


UNIX_SOCKET_PATH_MAX = 100
"""Longest unix socket path used, in bytes (Linux allows 107): past it, TCP only."""


class EmbeddedRedis:
    """Starts redis-server with AOF on, data under ``data_dir``; ``stop()`` shuts it down cleanly.
    It listens on 127.0.0.1 (``url``) and, with ``unix_socket``, on a unix socket in ``data_dir``
    too (``unix_url``, owner only): a process on the same host spends less CPU per round trip over
    it than over loopback TCP, whose sender also runs the receiver's TCP stack. With ``password``, it
    answers only those who give it (loopback is open to every process of every user on the host):
    the password is in ``url``, in ``redis.url`` and in a config file of the data directory, all
    owner only, never on redis-server's command line."""

    def __init__(self, data_dir: Path, port: int = 0, appendfsync: str = "everysec",
                 password: str | None = None, extra_args: Sequence[str] = (), unix_socket: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.extra_args = list(extra_args)
        """More ``redis-server`` arguments (a cluster node's, see ``embedded_cluster``)."""
        socket_path = (self.data_dir / "redis.sock").resolve()
        self.socket_path = socket_path if unix_socket and len(bytes(socket_path)) <= UNIX_SOCKET_PATH_MAX else None
        """The unix socket it listens on (None: not asked for, or its path is too long for one)."""
        self.port = port or free_port()
        self._port_picked = not port  # picked here: another may be picked if it is taken by then
        self._log_from = 0  # the size of redis.log when the last start began (``port_was_taken``)
        self.appendfsync = appendfsync
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None
        self._lock_file: TextIO | None = None
        self._spawning = threading.Lock()
        """Held from the fork of a redis-server to its pid noted (``process``, the pidfile): a restart
        runs in a worker thread, and a hard exit meanwhile must find the child it is making."""
        self._exiting = False  # set by ``kill_softly``: no redis-server is forked from then on

    @property
    def url(self) -> str:
        # The user named (``default``, whose password ``requirepass`` sets): redis-cli 7.0 reads the empty user of
        # ``redis://:PASSWORD@`` as a user named "" and is refused, and redis.url is what an operator gives it.
        auth = f"default:{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str | None:
        """The URL of its unix socket (see ``socket_path``), or None."""
        if self.socket_path is None:
            return None
        # Quoted: a data directory named like ``run#1`` or ``50%41`` must not read as URL syntax.
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"unix://{auth}{quote(str(self.socket_path))}?db=0"

    @property
    def local_url(self) -> str:
        """The cheapest way in from this host: the unix socket where there is one, else TCP."""
        return self.unix_url or self.url

    def start(self, timeout_s: float = 10.0, ping_timeout_s: float = 1.0, load_timeout_s: float = 600.0,
              abandon: Callable[[], bool] | None = None) -> EmbeddedRedis:
        """Start redis-server and wait until it answers and has loaded its append-only file: at most
        ``timeout_s`` until it first answers; then, while it reports loading, at most
        ``load_timeout_s`` from the start (a large estate's AOF read from a cold disk takes a while;
        the progress is logged every ``LOAD_PROGRESS_EVERY_S``). ``abandon``, asked between polls:
        True stops redis-server and raises ``StartAbandoned``. A port picked here that another process
        took before redis-server bound it is picked again, on the first start only (a restart keeps
        the address the service and its publishers were given)."""
        for attempt in range(1, PORT_TRIES + 1):
            first = self._lock_file is None
            try:
                return self._start(timeout_s, ping_timeout_s, load_timeout_s, abandon)
            except RedisDidNotStart:
                if not (first and self._port_picked and attempt < PORT_TRIES and self.port_was_taken()):
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def port_was_taken(self) -> bool:
        """The last start failed because a port it was to listen on was taken: said by what redis-server
        logged during that start only. The log is kept across starts and runs: a bind that failed in an
        earlier one must not make a start failing for its own reason (a damaged AOF, a load past its
        bound) try again on other ports, multiplying the wait and hiding the first port."""
        try:
            with self._logfile.open("rb") as written:
                written.seek(self._log_from)
                return b"Address already in use" in written.read()
        except OSError:
            return False

    def _start(self, timeout_s: float, ping_timeout_s: float, load_timeout_s: float,
               abandon: Callable[[], bool] | None) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Its AOF holds every reservation and fact, written under the caller's umask (often 022): the
        # directory is its owner's alone, as a packaged Redis's is.
        self.data_dir.chmod(0o700)
        self._log_from = self._logfile.stat().st_size if self._logfile.exists() else 0  # see port_was_taken
        again = self._lock_file is not None  # started before (a restart): the lock and the pid are ours
        self._lock()
        if not again:
            self._stop_leftover()
        # Own session: a Ctrl-C aimed at the service must not kill Redis before the service
        # has flushed its last snapshot; we stop it ourselves.
        if self.password:  # in a file of the owner's, not on the command line every local user may read
            _owner_only(self._auth_file, f"requirepass {_quoted(self.password)}\n")
        with self._spawning:
            if self._exiting:  # a hard exit is under way: a child forked now would outlive it
                raise StartAbandoned("the process exits: the embedded redis-server is not started again")
            self.process = subprocess.Popen(self._args(), stdin=subprocess.DEVNULL, start_new_session=True)
            self._pidfile.write_text(str(self.process.pid))
            _owner_only(self.data_dir / "redis.url", self.url + "\n")  # see kill_softly: under _spawning
        try:
            self._wait_until_ready(timeout_s, ping_timeout_s, load_timeout_s, abandon or (lambda: False))
        except BaseException:
            # Not left running behind a failed start, nor holding the data directory — unless a
            # running service restarts it: the directory stays the service's until it exits.
            try:
                self._stop_process()
            finally:
                if not again:
                    self._unlock()
            raise
        return self

    def _args(self) -> list[str]:
        args = [
            redis_server_binary(),
            *([str(self._auth_file)] if self.password else []),  # a config file comes first
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(self._logfile),
            # A replica of its own syncs at once: Redis's default makes a primary wait 5 s for more
            # replicas before every full sync (``extra_args`` may say otherwise).
            "--repl-diskless-sync-delay", "0",
        ]
        if self.socket_path is not None:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        return args + self.extra_args

    def _wait_until_ready(self, timeout_s: float, ping_timeout_s: float, load_timeout_s: float,
                          abandon: Callable[[], bool]) -> None:
        assert self.process is not None
        began = time.monotonic()
        progress = _LoadProgress(began)
        client = redis.Redis.from_url(self.local_url, socket_timeout=ping_timeout_s)
        try:
            while True:
                if abandon():
                    raise StartAbandoned("the start of the embedded redis-server was abandoned")
                if self.process.poll() is not None:
                    code = self.process.returncode
                    raise RedisDidNotStart(f"redis-server exited with {code}; see {self._logfile}")
                try:
                    # INFO answers while the AOF loads (PING says LOADING): its progress, or done.
                    persistence = client.info("persistence")
                    if persistence.get("loading", 0) == 0 and client.ping():
                        if self._answers_itself(client):
                            return
                        progress.foreign = True  # until this one exits (its bind failed) or the deadline
                    else:
                        progress.seen(persistence)
                # A busy machine can accept the connection and answer late: in redis-py 8 that
                # TimeoutError is no ConnectionError, and is no reason to give up before the deadline.
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                self._check_deadlines(time.monotonic() - began, progress, timeout_s, load_timeout_s)
                time.sleep(0.02)
        finally:
            client.close()

    def _answers_itself(self, client: redis.Redis) -> bool:
        """Whether the server answering on this port is the one started here. A port is only free when
        it is picked: another process's redis-server may take it first, and answer there until this one
        fails to bind and exits (``port_was_taken``); taken for this one, its keys and its cluster
        state would be another's."""
        assert self.process is not None
        return int(client.info("server").get("process_id", -1)) == self.process.pid

    def _check_deadlines(self, waited_s: float, progress: _LoadProgress, timeout_s: float,
                         load_timeout_s: float) -> None:
        if not progress.loading and waited_s > timeout_s:
            if progress.foreign:
                raise RedisDidNotStart(f"127.0.0.1:{self.port} is answered by another redis-server than the one "
                                       f"started here (its port is taken); see {self._logfile}")
            raise RedisDidNotStart(f"redis-server on 127.0.0.1:{self.port} did not answer PING within "
                                   f"{timeout_s}s; see {self._logfile}")
        if progress.loading and waited_s > load_timeout_s:
            raise RedisDidNotStart(f"redis-server on 127.0.0.1:{self.port} was still loading its append-only "
                                   f"file after {load_timeout_s:g}s ({progress.percent}); allow longer with "
                                   f"redis_load_timeout_s; see {self._logfile}")

    def _lock(self) -> None:
        """One owner per data directory: a second service must not share (or kill) this Redis.
        The lock dies with the process, so a service killed with -9 leaves no stale lock."""
        if self._lock_file is not None:
            return
        handle = (self.data_dir / "owner.lock").open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise DataDirInUse(
                f"data_dir: {self.data_dir} is in use by another running service; give each its own data_dir"
            ) from None
        self._lock_file = handle

    @property
    def _logfile(self) -> Path:
        return (self.data_dir / "redis.log").resolve()

    @property
    def _auth_file(self) -> Path:
        return (self.data_dir / "redis-auth.conf").resolve()

    @property
    def _pidfile(self) -> Path:
        return self.data_dir / "redis-server.pid"

    def _stop_leftover(self) -> None:
        """A service killed with -9 leaves its Redis running on the same files: stop it first."""
        try:
            pid = int(self._pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"redis-server" not in cmdline:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def kill_softly(self) -> None:
        """SIGTERM without waiting (Redis still flushes its AOF), ``redis.url`` removed (as ``stop`` does; written
        under ``_spawning``, it is never written after this): for a process about to exit hard. A restart forking its
        redis-server now is waited for (milliseconds; bounded), and none forks after: else that child would outlive
        the service, unknown to its pidfile, on the data directory the next start takes."""
        spawned = self._spawning.acquire(timeout=5.0)
        try:
            self._exiting = True
            if self.process and self.process.poll() is None:
                self.process.terminate()
            if self._lock_file is not None:  # ours until this process exits: no start writes it meanwhile
                (self.data_dir / "redis.url").unlink(missing_ok=True)
        finally:
            if spawned:
                self._spawning.release()

    def stop(self, timeout_s: float = 10.0) -> None:
        try:
            self._stop_process(timeout_s)
            if self._lock_file is not None:  # this directory's: a start refused it (in use) leaves the other's be
                # Left, it named a Redis gone (the next start's port and password are new): atpctl and atp-publisher,
                # given no URL, failed there. Under the lock: no start of this directory writes it meanwhile.
                (self.data_dir / "redis.url").unlink(missing_ok=True)
        finally:
            self._unlock()

    def _stop_process(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.process is not None and self.process.poll() is None:
            # redis-server flushes the AOF on SIGTERM, but refuses it while it writes its first AOF
            # ("Writing initial AOF, can't exit": a replica just synced): asked again until it exits.
            self.process.terminate()
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                return
            try:
                self.process.wait(min(left, _TERM_AGAIN_S))
            except subprocess.TimeoutExpired:
                continue

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _owner_only(path: Path, text: str) -> None:
    """``text`` written to ``path``, readable by this user alone, also where an older file was not.
    Written beside it and renamed into place: a reader (atp-publisher starting) finds the last whole
    file or the new one, never one emptied or cut short by a write under way or failed (a full disk)."""
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            os.fchmod(fd, 0o600)  # a part left by a killed start may have had other bits
            file.write(text)
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def _quoted(value: str) -> str:
    """``value`` as one argument of a redis.conf line (Redis reads C-style escapes inside quotes)."""
    return '"' + "".join(c if c.isprintable() and c not in '"\\' else "".join(f"\\x{b:02x}" for b in c.encode())
                         for c in value) + '"'


class _LoadProgress:
    """What a start waiting for redis-server knows of its loading, and when it last said so; and
    whether another redis-server answered on its port (``foreign``)."""

    __slots__ = ("_said_at", "foreign", "loading", "percent")

    def __init__(self, began: float) -> None:
        self.loading = self.foreign = False
        self.percent = "no progress reported"
        self._said_at = began - LOAD_PROGRESS_EVERY_S  # the first sight of a load is said at once

    def seen(self, persistence: dict[str, object]) -> None:
        """``INFO persistence`` while loading: logged at once, then every ``LOAD_PROGRESS_EVERY_S``."""
        self.loading = True
        self.percent = f"{persistence.get('loading_loaded_perc', 0)}% loaded"
        now = time.monotonic()
        if now - self._said_at >= LOAD_PROGRESS_EVERY_S:
            self._said_at = now
            log.info("embedded redis-server is loading its append-only file: %s, about %s s left", self.percent,
                     persistence.get("loading_eta_seconds", "?"),
                     extra={"event": "redis_loading", "loaded_percent": persistence.get("loading_loaded_perc")})
