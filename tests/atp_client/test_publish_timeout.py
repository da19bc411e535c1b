"""``atpctl events publish --timeout``: the deadline of each Redis call, as it is of each call to the service.
It was not passed to the Redis client: redis-py's own 5 s socket timeout bounded the calls whatever --timeout
said. A call cut short by it is told as it stands (R7): sent, it is in doubt; still connecting, it was not sent."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.atp_client.test_ctl import receipt
from tests.atp_client.test_publish import STREAM

REDIS_OWN_TIMEOUT_S = 5.0
"""redis-py's socket timeout, which bounded each call of publish whatever --timeout said."""
WAITED_AFTER_THE_SEND_S = 60.0
"""The test's own bound on the run once the call is out, against a hang alone: what tells --timeout 0.2 bounded the
call is the run's own word, "no answer within --timeout 0.2 s", said only where its bound ran out; redis-py's timeout
said "Timeout reading from ..." after ``REDIS_OWN_TIMEOUT_S``. A bound on the wall clock between (it was 3 s, for a
run that takes 0.3 s once the call is out) failed the run on a host starved for as long, and told no more."""


@pytest.fixture
def silent_peer() -> Iterator[socket.socket]:
    """A TCP listener that takes the connection and never answers (a hung Redis): the handshake waits."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(60)
        yield server


def started(redis_url: str, facts: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "atp_client.ctl", "--json", "--timeout", "0.2", "events", "publish",
                             str(facts), "--stream", STREAM, "--redis-url", redis_url, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ended(tool: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    """The run's end, once its call is out (``WAITED_AFTER_THE_SEND_S``: against a hang)."""
    try:
        out, err = tool.communicate(timeout=WAITED_AFTER_THE_SEND_S)
    except subprocess.TimeoutExpired:
        tool.kill()
        tool.communicate()
        pytest.fail(f"--timeout 0.2 did not bound the Redis call: still waiting {WAITED_AFTER_THE_SEND_S} s after "
                    f"it was sent (redis-py's own timeout is {REDIS_OWN_TIMEOUT_S} s)")
    return subprocess.CompletedProcess(tool.args, tool.returncode, out, err)


def test_an_xadd_redis_holds_past_the_timeout_ends_the_run_in_doubt(redis_url: str, tmp_path: Path) -> None:
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(receipt(n, int(time.time() * 1000)) + "\n" for n in range(3)))
    with redis.Redis.from_url(redis_url) as admin:
        admin.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")  # the XADDs wait: sent, never answered
        tool = started(redis_url, facts)
        try:
            while tool.poll() is None and not any(client["cmd"] == "xadd" and "b" in client["flags"]
                                                  for client in admin.client_list()):
                time.sleep(0.01)  # until the chunk is out (its XADD held by the pause), or the run is over
            done = ended(tool)
        finally:
            if tool.poll() is None:
                tool.kill()
                tool.communicate()
            admin.execute_command("CLIENT", "UNPAUSE")
    assert done.returncode == 6 and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    assert json.loads(done.stdout) == {"stream": STREAM, "published": 0, "in_doubt": 3}, done.stdout  # R7
    assert "no answer within --timeout 0.2 s" in done.stderr and "3 more sent without an answer" in done.stderr, \
        done.stderr


@pytest.mark.parametrize("cluster", [[], ["--redis-cluster"]])
def test_a_connection_whose_handshake_is_not_answered_within_the_timeout_ends_the_run_not_sent(
        silent_peer: socket.socket, tmp_path: Path, cluster: list[str]) -> None:
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(receipt(n, int(time.time() * 1000)) + "\n" for n in range(3)))
    tool = started(f"redis://127.0.0.1:{silent_peer.getsockname()[1]}", facts, *cluster)
    try:
        connection, _ = silent_peer.accept()  # the handshake (or the cluster's CLUSTER SLOTS) is out
        with connection:
            done = ended(tool)
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.communicate()
    assert done.returncode == 6 and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    assert json.loads(done.stdout) == {"stream": STREAM, "published": 0, "in_doubt": 0}, done.stdout
    assert "no answer within --timeout 0.2 s" in done.stderr and "its batch not sent" in done.stderr, done.stderr
