"""Ctrl-C during a bulk command of ``atpctl``: the partial summary (what was answered, what is in
doubt, what was never sent) and exit status 130, as a shell tool interrupted ends — not a
KeyboardInterrupt traceback that leaves the operator guessing how far a 2-million-line file got.

The peer is a TCP listener that takes the connection and never answers (a hung service or Redis):
once it has the connection the tool is waiting on it (gRPC's handshake, Redis's answer), and
SIGINT lands there."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.atp_client.test_ctl import receipt

EXIT_INTERRUPTED = 130


@pytest.fixture
def silent_peer() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(60)
        yield server


TAKING_SIGINT = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                 "runpy.run_module('atp_client.ctl', run_name='__main__', alter_sys=True)")
"""``python -m atp_client.ctl`` taking Ctrl-C as a terminal's tool does. A test run started in the background
(`make test &`, CI's shells) ignores SIGINT, and a child inherits that: Python then installs no handler of its own,
and the tool would go on as a shell's background job rightly does. Its handler is set in the child's own Python, not
by a ``preexec_fn``: run between fork and exec in a test worker whose gRPC threads hold locks, that hung the child now
and then before it ran the tool (its connection never made: the test's ``accept`` timed out)."""


def interrupted(server: socket.socket, args: list[str]) -> subprocess.CompletedProcess[str]:
    """``atpctl ARGS`` interrupted once it has connected to ``server`` (its first call in flight)."""
    tool = subprocess.Popen([sys.executable, "-c", TAKING_SIGINT, "--json", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        connection, _ = server.accept()
        with connection:
            tool.send_signal(signal.SIGINT)
            out, err = tool.communicate(timeout=60)
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.communicate()
    return subprocess.CompletedProcess(tool.args, tool.returncode, out, err)


def test_an_interrupted_import_says_what_is_in_doubt_and_what_was_not_sent(
        silent_peer: socket.socket, tmp_path: Path) -> None:
    facts = tmp_path / "facts.jsonl"
    now = int(time.time() * 1000)
    facts.write_text("".join(receipt(n, now) + "\n" for n in range(25)))
    port = silent_peer.getsockname()[1]
    done = interrupted(silent_peer, ["--target", f"127.0.0.1:{port}", "--timeout", "120", "events", "import",
                                     str(facts), "--batch", "10"])
    assert done.returncode == EXIT_INTERRUPTED and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    # The peer never completes gRPC's handshake: the first call was never sent, so it is not in doubt.
    assert json.loads(done.stdout) == {"refused": 0, "in_doubt": 0, "not_sent": 25}
    assert f"{facts}:1-10: not applied (not sent)" in done.stderr and "again" in done.stderr, done.stderr


def test_an_interrupted_stock_load_says_what_was_not_answered(silent_peer: socket.socket, tmp_path: Path) -> None:
    counts = tmp_path / "counts.csv"
    counts.write_text("sku,location,on_hand\nA,S1,5\nB,S1,-1\nC,S1,7\n")
    port = silent_peer.getsockname()[1]
    done = interrupted(silent_peer, ["--target", f"127.0.0.1:{port}", "--timeout", "120", "stock", "load",
                                     str(counts), "--as-of", "2026-11-28T06:00:00Z"])
    assert done.returncode == EXIT_INTERRUPTED and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    # The peer never completes gRPC's handshake: no call was sent, so none is in doubt.
    assert json.loads(done.stdout) == {"rows": 3, "unreadable": 1, "not_answered": 2, "not_sent": 2}
    assert "interrupted" in done.stderr and "again" in done.stderr, done.stderr
    assert (tmp_path / "counts.csv.rejected.csv").read_text().count("\n") == 2  # its header and line 3


def test_an_interrupted_publish_still_connecting_says_nothing_was_sent(silent_peer: socket.socket,
                                                                      tmp_path: Path) -> None:
    facts = tmp_path / "facts.jsonl"
    now = int(time.time() * 1000)
    facts.write_text("".join(receipt(n, now) + "\n" for n in range(5)))
    port = silent_peer.getsockname()[1]
    done = interrupted(silent_peer, ["events", "publish", str(facts), "--redis-url", f"redis://127.0.0.1:{port}"])
    assert done.returncode == EXIT_INTERRUPTED and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    summary = json.loads(done.stdout)
    # The peer never answers Redis's handshake: the chunk was never sent, so it is not in doubt (as an import's call).
    assert summary["published"] == 0 and summary["in_doubt"] == 0, summary
    assert f"{facts}:1: " in done.stderr and "interrupted" in done.stderr and "again" in done.stderr, done.stderr
    assert "its batch not sent" in done.stderr and "without an answer" not in done.stderr, done.stderr


def closed_port() -> int:
    """A port nothing listens on: its connection is refused."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        return int(server.getsockname()[1])


def test_an_import_to_a_refused_connection_says_nothing_was_sent(tmp_path: Path) -> None:
    """A service that is down refuses the connection: nothing of the file can have landed (R7), so
    the operator must not be told the first call is in doubt ("applied or not")."""
    facts = tmp_path / "facts.jsonl"
    now = int(time.time() * 1000)
    facts.write_text("".join(receipt(n, now) + "\n" for n in range(25)))
    done = subprocess.run([sys.executable, "-m", "atp_client.ctl", "--json", "--target", f"127.0.0.1:{closed_port()}",
                           "events", "import", str(facts), "--batch", "10"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 6, (done.returncode, done.stderr)  # unavailable: retry later
    assert json.loads(done.stdout) == {"refused": 0, "in_doubt": 0, "not_sent": 25}
    assert f"{facts}:1-10: not applied (not sent)" in done.stderr and "nothing was sent" in done.stderr, done.stderr


@pytest.mark.parametrize("command", [["reserve", "r1", "A@L:1"], ["confirm", "r1"]])
def test_a_change_to_a_refused_connection_says_nothing_was_sent(command: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "atp_client.ctl", "--target", f"127.0.0.1:{closed_port()}",
                           *command], capture_output=True, text=True, timeout=60)
    assert done.returncode == 6 and "nothing was sent" in done.stderr, (done.returncode, done.stderr)
    assert "may have been made" not in done.stderr, done.stderr


def test_an_interrupted_change_says_it_may_have_been_made_and_how_to_learn_what_was_decided(
        silent_peer: socket.socket) -> None:
    """Ctrl-C during a Reserve: its call may have reached the service (R7); "interrupted" alone left the operator
    guessing whether to reserve again with another id (a second hold) or not at all."""
    port = silent_peer.getsockname()[1]
    done = interrupted(silent_peer, ["--target", f"127.0.0.1:{port}", "--timeout", "120", "reserve", "r1", "A@L:1"])
    assert done.returncode == EXIT_INTERRUPTED and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    assert "may have been sent and made" in done.stderr and "same ids" in done.stderr, done.stderr


def test_an_interrupted_publish_reading_the_cluster_s_slots_says_nothing_was_sent(silent_peer: socket.socket,
                                                                                  tmp_path: Path) -> None:
    """Ctrl-C while a cluster client reads its slots, its first read (a node that takes the connection and never
    answers): the run ended on ``atpctl: interrupted`` alone, no summary on stdout, where any later step says what the
    stream took (nothing here: no entry was sent) and to publish the file again."""
    facts = tmp_path / "facts.jsonl"
    now = int(time.time() * 1000)
    facts.write_text("".join(receipt(n, now) + "\n" for n in range(5)))
    port = silent_peer.getsockname()[1]
    done = interrupted(silent_peer, ["--timeout", "120", "events", "publish", str(facts), "--redis-cluster",
                                     "--stream", "atp:{in}:pos", "--redis-url", f"redis://127.0.0.1:{port}"])
    assert done.returncode == EXIT_INTERRUPTED and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    assert done.stdout, f"no summary; stderr: {done.stderr!r}"
    assert json.loads(done.stdout) == {"stream": "atp:{in}:pos", "published": 0, "in_doubt": 0}
    assert f"{facts}:1: " in done.stderr and "interrupted" in done.stderr and "again" in done.stderr, done.stderr
    assert "its batch not sent" in done.stderr and "without an answer" not in done.stderr, done.stderr


@pytest.mark.parametrize("after_each", ["\n", "\n\n"], ids=["one-per-line", "double-spaced"])
async def test_a_ctrl_c_while_a_long_file_is_checked_stops_the_check_and_says_nothing_was_published(
        after_each: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every line is checked before any is written, without a pause: a Ctrl-C then (the run's task cancelled, as
    asyncio.run does on SIGINT) was seen only once the whole file was checked, seconds to minutes for millions of lines,
    and a bad line after it refused the file (exit 3) where the operator had asked to stop. Double-spaced: the check
    paused at line numbers that are multiples of ``CHECK_PAUSE_EVERY``, which a file whose facts are on odd lines (a
    blank line after each, skipped) never reached; it counts the lines checked. Deterministic: the task runs to its
    first pause, is cancelled there, and the file's one bad line comes after it."""
    import argparse
    import asyncio

    from atp_client._events_commands import CHECK_PAUSE_EVERY, _publish

    facts = tmp_path / "facts.jsonl"
    now = int(time.time() * 1000)
    facts.write_text("".join(receipt(n, now) + after_each for n in range(CHECK_PAUSE_EVERY + 5)) + "not a fact\n")
    args = argparse.Namespace(timeout=5.0, redis_cluster=False, json=True)
    run = asyncio.ensure_future(_publish(args, facts, "atp:in:pos", f"redis://127.0.0.1:{closed_port()}"))
    await asyncio.sleep(0)  # the run checks its lines up to its first pause
    run.cancel()
    assert await run == EXIT_INTERRUPTED
    out, err = capsys.readouterr()
    assert json.loads(out) == {"stream": "atp:in:pos", "published": 0, "in_doubt": 0}, (out, err)
    assert f"{facts}: interrupted while its lines were checked: nothing published" in err, err


async def test_a_ctrl_c_while_the_client_closes_after_the_last_chunk_still_says_what_was_published(
        redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every chunk answered, the client closing (its connections' ends awaited): a Ctrl-C then left the run as
    CancelledError, "atpctl: interrupted" alone and no summary, where the stream held the whole file: the operator,
    told nothing of it, publishes it again, past the grace window a second time (E8). Deterministic: the run's task is
    cancelled, as asyncio.run's SIGINT handler does, as the client's close begins."""
    import argparse
    import asyncio

    import redis
    import redis.asyncio as aioredis

    from atp_client._events_commands import _publish

    facts = tmp_path / "facts.jsonl"
    now = int(time.time() * 1000)
    facts.write_text("".join(receipt(n, now) + "\n" for n in range(5)))
    args = argparse.Namespace(timeout=5.0, redis_cluster=False, json=True)
    run = asyncio.ensure_future(_publish(args, facts, "atp:in:pos", redis_url))
    closing = aioredis.Redis.aclose

    async def interrupted_close(self: aioredis.Redis, *given: object, **named: object) -> None:
        if type(self) is aioredis.Redis:  # the run's client, not a pipeline of it
            run.cancel()
        await closing(self, *given, **named)  # type: ignore[arg-type]

    monkeypatch.setattr(aioredis.Redis, "aclose", interrupted_close)
    assert await run == EXIT_INTERRUPTED
    out, err = capsys.readouterr()
    assert json.loads(out) == {"stream": "atp:in:pos", "published": 5, "in_doubt": 0}, (out, err)
    assert "interrupted" in err and "5 entries written" in err, err
    with redis.Redis.from_url(redis_url) as admin:
        assert admin.xlen("atp:in:pos") == 5
