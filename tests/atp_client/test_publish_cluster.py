"""``atpctl events publish --redis-cluster`` to a Redis out of cluster mode: a bad command line (exit 2, publish
without --redis-cluster), known by what the node says of itself (``INFO cluster``: ``cluster_enabled:0``), not by the
words of its refusal of ``CLUSTER SLOTS``. (A real Redis Cluster taking the facts: tests/atp_service/app/
test_cluster_mode.py; one Redis told apart from a user denied ``CLUSTER SLOTS``: test_publish.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import redis

from atp_service.storage.embedded_redis import EmbeddedRedis
from tests.atp_client.test_ctl import receipt
from tests.atp_client.test_publish import STREAM


def published(redis_url: str, facts: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "atp_client.ctl", "--json", "events", "publish", str(facts),
                           "--stream", STREAM, "--redis-url", redis_url, "--redis-cluster"],
                          capture_output=True, text=True, timeout=60)


def assert_told_to_publish_without_redis_cluster(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 2 and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    assert "without --redis-cluster" in done.stderr, done.stderr
    assert json.loads(done.stdout) == {"stream": STREAM, "published": 0, "in_doubt": 0}, done.stdout


def test_a_redis_whose_cluster_command_is_renamed_is_told_no_cluster_not_retry_later(tmp_path: Path) -> None:
    """``rename-command CLUSTER ""`` (or a proxy without it): Redis answers ``CLUSTER SLOTS`` "unknown command", not
    "cluster support disabled", and that refusal's text was what told one Redis from a cluster: exit 6, "again once
    Redis takes writes", and a script retrying on 6 looped for ever, where no retry changes it."""
    facts = tmp_path / "facts.jsonl"
    facts.write_text(receipt(0, int(time.time() * 1000)) + "\n")
    server = EmbeddedRedis(tmp_path / "redis", extra_args=["--rename-command", "CLUSTER", ""]).start()
    try:
        done = published(server.url, facts)
    finally:
        server.stop()
    assert_told_to_publish_without_redis_cluster(done)


def test_a_user_that_may_not_run_info_is_told_no_cluster_by_the_refusal_s_kind(redis_url: str, tmp_path: Path) -> None:
    """``INFO`` is ``@dangerous``, which the documented ACLs take away: the node cannot be asked, and an ``ERR``
    refusal of ``CLUSTER SLOTS`` (no code of its own, as NOPERM or CLUSTERDOWN have) still reads as no cluster."""
    facts = tmp_path / "facts.jsonl"
    facts.write_text(receipt(0, int(time.time() * 1000)) + "\n")
    with redis.Redis.from_url(redis_url) as admin:
        admin.acl_setuser("publisher", enabled=True, passwords=["+pw"], commands=["+@all", "-@dangerous"], keys=["*"])
        try:
            done = published(redis_url.replace("redis://", "redis://publisher:pw@"), facts)
        finally:
            admin.acl_deluser("publisher")
    assert_told_to_publish_without_redis_cluster(done)
