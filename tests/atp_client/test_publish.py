"""``atpctl events publish`` against a real Redis: what it writes is what the intake accepts, and a
file it refuses leaves nothing of itself on the stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from atp_client._args import env_boolean
from atp_client._parser import build_parser
from atp_service.config import ServiceConfig
from atp_service.storage import DataDirInUse
from atp_service.storage.embedded_redis import EmbeddedRedis
from tests.conftest import ServiceFactory

STREAM = "atp:in:pos"


def publish(redis_url: str, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "atp_client.ctl", "--json", "events", "publish", str(path),
                           "--stream", STREAM, "--redis-url", redis_url, *args],
                          capture_output=True, text=True, timeout=60)


def fact(n: int, **changes: Any) -> dict[str, Any]:
    at = datetime.fromtimestamp(time.time() - 60, UTC).isoformat().replace("+00:00", "Z")
    out = {"event_id": f"sale-{n}", "source": "pos-1", "kind": "FACT_KIND_SALE", "sku": "SKU",
           "location": "S1", "quantity": 1, "event_time": at}
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def stream_length(redis_url: str) -> int:
    with redis.Redis.from_url(redis_url) as r:
        return int(r.xlen(STREAM))


@pytest.mark.parametrize(("bad", "field"), [
    ({"event_time": None}, "event_time"),  # written as event_time_ms 0: dead-lettered by the intake
    ({"kind": None}, "kind"),  # written as kind UNSPECIFIED: dead-lettered
    ({"kind": 99}, "kind"),  # no name: the tool stopped half-way with a traceback
    ({"source": ""}, "source"),
    ({"kind": "FACT_KIND_RECEIPT", "reservation_id": "order-1"}, "reservation_id"),
    ({"quantity": -1}, "quantity"),
])
def test_a_line_the_intake_would_dead_letter_is_refused_naming_it_before_anything_is_written(
        redis_url: str, tmp_path: Path, bad: dict[str, Any], field: str) -> None:
    """The intake answers nothing to a producer: a line it dead-letters is only seen in atp:dlq.
    So the tool checks every line against the entry format first, and a file with a bad line far
    in is refused whole, naming the line and field, rather than partly written and reported done."""
    path = tmp_path / "facts.jsonl"
    lines = [fact(n) for n in range(1500)]
    lines[1200] = fact(1200, **bad)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = publish(redis_url, path)
    assert done.returncode != 0, (done.returncode, done.stdout, done.stderr)
    assert f"{path}:1201: {field}:" in done.stderr, done.stderr
    assert stream_length(redis_url) == 0  # nothing of the refused file written


async def test_what_it_writes_the_intake_applies_and_a_file_published_twice_applies_once(
        start_service: ServiceFactory, redis_url: str, tmp_path: Path) -> None:
    """Every kind as the tool writes it is taken by the real intake (none dead-lettered), and a
    re-run of the same file (after a run cut short, say) is deduped by (source, event_id), E8."""
    _, client = await start_service()
    path = tmp_path / "facts.jsonl"
    lines = [fact(0, event_id="rcv-1", kind="FACT_KIND_RECEIPT", quantity=10), fact(1),
             fact(2, event_id="adj-1", kind="FACT_KIND_ADJUST", quantity=-2),
             fact(3, event_id="ret-1", kind="FACT_KIND_RETURN", quantity=1, sku="SKU", location="S1")]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    for run in (1, 2):
        done = await asyncio.to_thread(publish, redis_url, path)
        assert done.returncode == 0 and json.loads(done.stdout)["published"] == 4, done.stderr
        await _until_read(redis_url, 4 * run)
        (position,) = await client.availability([("SKU", "S1")])
        assert position.on_hand == 10 - 1 - 2 + 1, run
    with redis.Redis.from_url(redis_url) as r:
        assert r.xlen("atp:dlq") == 0


async def _until_read(redis_url: str, entries: int) -> None:
    """Until the service's group has read and acknowledged ``entries`` entries of the stream."""
    with redis.Redis.from_url(redis_url) as r:
        for _ in range(600):
            groups = r.xinfo_groups(STREAM)
            if groups and groups[0]["entries-read"] == entries and groups[0]["pending"] == 0:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"the service did not read {entries} entries of {STREAM}")


def test_a_redis_refusing_writes_half_way_leaves_a_count_of_what_was_written(
        redis_url: str, tmp_path: Path) -> None:
    """Redis stops taking entries part-way through a file (here: out of memory, maxmemory with
    noeviction; a failover or a network cut stop it the same way). The operator is told, on stderr
    and in the summary, how many entries the stream took and from which line to look, and the exit
    status is not 0 — not a traceback with no count, leaving only a guess at what was sent."""
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps(fact(n, event_id=f"sale-{n:07d}")) + "\n" for n in range(30_000)))
    with redis.Redis.from_url(redis_url) as r:
        used = int(r.info("memory")["used_memory"])
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", used + 400_000)  # some thousands of entries, not 30,000
        try:
            done = publish(redis_url, path)
        finally:
            r.config_set("maxmemory", 0)
        landed = int(r.xlen(STREAM))
        taken = [fields[b"event_id"] for _, fields in r.xrange(STREAM)]
    assert 0 < landed < 30_000, landed
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    summary = json.loads(done.stdout)
    assert summary["published"] == landed and summary["in_doubt"] == 0, summary
    # The first refused line is named, and every line before it was taken. Lines after it may be taken
    # too: Redis frees the refused entries' input buffer as it goes, so the next ones of the same chunk
    # can fit again (the next test) — how many depends on how much of the chunk Redis read at once.
    refused = re.search(rf"{re.escape(str(path))}:(\d+): not published: ", done.stderr)
    assert refused is not None and "maxmemory" in done.stderr, done.stderr
    first_refused = int(refused.group(1))  # line n holds the fact sale-(n - 1)
    assert taken[:first_refused - 1] == [f"sale-{n:07d}".encode() for n in range(first_refused - 1)], first_refused
    assert f"sale-{first_refused - 1:07d}".encode() not in taken
    assert "again" in done.stderr  # what to do: publish the file again (E8 dedupes)


def test_entries_the_stream_took_after_a_refused_one_of_the_same_chunk_are_counted(
        redis_url: str, tmp_path: Path) -> None:
    """One entry in the middle of a chunk refused, the ones after it taken: here the refused one is
    too big for maxmemory. While it waits to run, Redis holds its 8 MB twice (its connection's input
    buffer and its arguments: over 16 MB), above the 12 MB of room; once it is refused only the
    buffer stays (about 8 MB, till Redis trims it), so the next entries fit. The count told is what the stream took,
    not the entries before the refused one: the operator is not told fewer lines were written than
    were, and is told the refused line and that publishing again is safe (E8)."""
    path = tmp_path / "facts.jsonl"
    lines = [fact(1), fact(2, event_id="x" * 8_000_000), fact(3), fact(4), fact(5)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with redis.Redis.from_url(redis_url) as r:
        r.delete(STREAM)
        used = int(r.info("memory")["used_memory"])
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", used + 12_000_000)  # midway between the two (see above)
        try:
            done = publish(redis_url, path)
        finally:
            r.config_set("maxmemory", 0)
        taken = [fields[b"event_id"] for _, fields in r.xrange(STREAM)]
    assert taken == [b"sale-1", b"sale-3", b"sale-4", b"sale-5"], taken  # line 2 refused, the rest taken
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    summary = json.loads(done.stdout)
    assert summary["published"] == len(taken) and summary["in_doubt"] == 0, summary
    assert f"{path}:2: not published: " in done.stderr and "maxmemory" in done.stderr, done.stderr
    assert f"{len(taken)} entries" in done.stderr and "again" in done.stderr and "E8" in done.stderr, done.stderr


@pytest.mark.parametrize("cluster", [[], ["--redis-cluster"]])
def test_a_redis_that_does_not_answer_is_exit_6_with_nothing_counted_written(tmp_path: Path,
                                                                            cluster: list[str]) -> None:
    """A connection refused is certain: nothing was sent. It was told as one entry "in doubt", "sent without an
    answer (written or not)", and the operator left to wonder whether the stream had it. A cluster none of whose
    nodes answers was a traceback, exit 1 ("failed otherwise"), where unreachable is 6, retry later."""
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps(fact(n)) + "\n" for n in range(3)))
    done = publish("redis://127.0.0.1:1", path, *cluster)
    assert done.returncode == 6 and "Traceback" not in done.stderr, done.stderr  # unavailable: retry later
    assert json.loads(done.stdout) == {"stream": STREAM, "published": 0, "in_doubt": 0}, done.stdout
    assert f"{path}:1: not published: " in done.stderr and "its batch not sent" in done.stderr, done.stderr
    assert "without an answer" not in done.stderr, done.stderr


def test_one_redis_named_a_cluster_is_a_usage_error_not_retry_later(redis_url: str, tmp_path: Path) -> None:
    """``--redis-cluster`` for a Redis not in cluster mode: no retry changes it, so not 6 (a script retrying on 6
    loops for ever), and no traceback: 2, a bad command line, nothing sent."""
    path = tmp_path / "facts.jsonl"
    path.write_text(json.dumps(fact(0)) + "\n")
    done = publish(redis_url, path, "--redis-cluster")
    assert done.returncode == 2 and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    assert "Cluster mode is not enabled" in done.stderr and "without --redis-cluster" in done.stderr, done.stderr
    assert json.loads(done.stdout) == {"stream": STREAM, "published": 0, "in_doubt": 0}, done.stdout


def test_a_cluster_user_denied_cluster_slots_is_not_permitted_not_a_redis_out_of_cluster_mode(
        redis_url: str, tmp_path: Path) -> None:
    """redis-py answers any refusal of ``CLUSTER SLOTS`` (the cluster client's first read) as "Cluster mode is not
    enabled on this node", the refusal itself only its context: a user whose ACL lacks ``+cluster|slots``
    (OPERATIONS.md asks for it) was told exit 2, a bad command line, "publish without --redis-cluster", where
    Redis said NOPERM: 7, the user's ACL, as a NOPERM of ``XADD`` is. Nothing sent."""
    path = tmp_path / "facts.jsonl"
    path.write_text(json.dumps(fact(0)) + "\n")
    with redis.Redis.from_url(redis_url) as r:
        r.acl_setuser("publisher", enabled=True, passwords=["+pw"], commands=["+@all", "-cluster|slots"], keys=["*"])
        try:
            done = publish(redis_url.replace("redis://", "redis://publisher:pw@"), path, "--redis-cluster")
        finally:
            r.acl_deluser("publisher")
    assert done.returncode == 7 and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    assert "NoPermissionError" in done.stderr and "without --redis-cluster" not in done.stderr, done.stderr
    assert json.loads(done.stdout) == {"stream": STREAM, "published": 0, "in_doubt": 0}, done.stdout


@pytest.mark.parametrize(("refusal", "status", "said"), [
    ("wrongtype", 3, "WRONGTYPE"),  # the key is no stream: --stream names another key
    ("noperm", 7, "NoPermissionError"),  # the user's ACL denies XADD (NOPERM)
    ("wrongpass", 7, "AuthenticationError"),  # the URL's password is not the user's
])
def test_a_redis_refusing_for_good_is_not_the_retry_later_status(
        redis_url: str, tmp_path: Path, refusal: str, status: int, said: str) -> None:
    """Redis refusing what no retry changes (the stream a key of another type, an ACL denying the user, a wrong
    password) was exit 6, "retry later": a script retrying on it looped for ever. It is the status of such a
    refusal (3: fix the request, 7: not permitted), naming what Redis said; nothing counted written."""
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps(fact(n)) + "\n" for n in range(3)))
    with redis.Redis.from_url(redis_url) as r:
        r.acl_setuser("publisher", enabled=True, passwords=["+pw"], commands=["+@all", "-xadd"], keys=["*"])
        try:
            if refusal == "wrongtype":
                r.set(STREAM, "not a stream")
            user = "publisher:pw" if refusal == "noperm" else "publisher:wrong" if refusal == "wrongpass" else ""
            done = publish(redis_url.replace("redis://", f"redis://{user}@") if user else redis_url, path)
        finally:
            r.acl_deluser("publisher")
    assert done.returncode == status and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    assert said in done.stderr and f"{path}:1: not published: " in done.stderr, done.stderr
    assert json.loads(done.stdout) == {"stream": STREAM, "published": 0, "in_doubt": 0}, done.stdout


def test_an_empty_stream_name_is_a_usage_error(redis_url: str, tmp_path: Path) -> None:
    """``--stream ''`` wrote the facts to the key "", which no intake reads: exit 0, the facts lost unsaid."""
    path = tmp_path / "facts.jsonl"
    path.write_text(json.dumps(fact(0)) + "\n")
    done = subprocess.run([sys.executable, "-m", "atp_client.ctl", "events", "publish", str(path), "--stream", "",
                           "--redis-url", redis_url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "argument --stream:" in done.stderr, (done.returncode, done.stderr)
    with redis.Redis.from_url(redis_url) as r:
        assert r.exists("") == 0


def test_the_default_stream_is_the_first_the_service_reads_and_one_it_does_not_read_is_refused(
        redis_url: str, tmp_path: Path) -> None:
    """With the input streams renamed (``make cluster``'s ``atp:{in}:pos``), ``--stream`` left out wrote to
    ``atp:in:pos``, which no intake reads: exit 0, the facts lost unsaid. The default is the first of
    ATP_INPUT_STREAMS, as the service reads it; a stream not among them, or the variable set empty (ingestion
    off), is refused as a bad command line, nothing written."""
    path = tmp_path / "facts.jsonl"
    path.write_text(json.dumps(fact(0)) + "\n")
    renamed = "atp:{in}:pos"

    def run(env_streams: str | None, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("ATP_INPUT_STREAMS", "ATP_REDIS_CLUSTER")}
        return subprocess.run([sys.executable, "-m", "atp_client.ctl", "--json", "events", "publish", str(path),
                               "--redis-url", redis_url, *args], capture_output=True, text=True, timeout=60,
                              env=env if env_streams is None else {**env, "ATP_INPUT_STREAMS": env_streams})

    done = run(f" {renamed} , atp:{{in}}:wms")
    assert done.returncode == 0 and json.loads(done.stdout)["stream"] == renamed, (done.stdout, done.stderr)
    # On a cluster, with the service's streams unknown here, atp:in:pos is none it reads (no hash tag): not guessed.
    for refused, args in ((run(f"{renamed},atp:{{in}}:wms", "--stream", STREAM), STREAM), (run(""), "empty"),
                          (run(None, "--redis-cluster"), "Redis Cluster")):
        assert refused.returncode == 2 and "argument --stream: " in refused.stderr, refused.stderr
        assert args in refused.stderr and "no intake would read" in refused.stderr, refused.stderr
    with redis.Redis.from_url(redis_url) as r:
        assert (r.xlen(renamed), r.exists(STREAM)) == (1, 0)


def test_the_parser_s_stream_is_the_one_to_write_to_without_a_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    """``atp_client.ctl.build_parser`` (exported) parsed ``stream`` as ``atp:in:pos`` where no ``--stream`` was given;
    since the default became ATP_INPUT_STREAMS's first, read in ``publish_facts`` alone, a caller that parsed atpctl's
    command line itself and wrote to ``args.stream`` got None (as ``target`` had, d719de53). It is the stream to write
    to: ATP_INPUT_STREAMS's first, else ``atp:in:pos``; a flag given is the flag."""
    monkeypatch.delenv("ATP_INPUT_STREAMS", raising=False)
    assert build_parser().parse_args(["events", "publish", __file__]).stream == STREAM
    monkeypatch.setenv("ATP_INPUT_STREAMS", " atp:{in}:pos , atp:{in}:wms")
    assert build_parser().parse_args(["events", "publish", __file__]).stream == "atp:{in}:pos"
    assert build_parser().parse_args(["events", "publish", __file__, "--stream", "x"]).stream == "x"


async def test_lines_written_to_a_file_after_its_check_are_not_published(
        redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """An export still writing the file while it is published: lines written after the check were published
    unchecked, and a torn one stopped the run part-way (the chunks before it written, exit 3 "nothing of it sent")."""
    import argparse

    from atp_client import _events_commands, _publish

    path = tmp_path / "facts.jsonl"
    path.write_text(json.dumps(fact(0)) + "\n" + json.dumps(fact(1)) + "\n")
    passes: list[int] = []
    real_entries = _publish.entries

    def entries(file: Path, facts: Any) -> Iterator[tuple[int, dict[str, str | int]]]:
        passes.append(1)
        yield from real_entries(file, facts)
        if len(passes) == 1:  # the check is done: the export goes on, a whole line, then half of one
            with file.open("a") as more:
                more.write(json.dumps(fact(2)) + "\n" + json.dumps(fact(3))[:20])

    monkeypatch.setattr(_publish, "entries", entries)
    args = argparse.Namespace(redis_cluster=False, json=True, timeout=10.0)  # the parser's default --timeout
    code = await _events_commands._publish(args, path, STREAM, redis_url)
    assert code == 0 and json.loads(capsys.readouterr().out)["published"] == 2
    assert stream_length(redis_url) == 2


def _one_fact_without_a_url(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A file of one fact, and this environment less any Redis URL or cluster setting."""
    path = tmp_path / "facts.jsonl"
    path.write_text(json.dumps(fact(0)) + "\n")
    return path, {k: v for k, v in os.environ.items() if k not in ("ATP_REDIS_URL", "ATP_REDIS_CLUSTER")}


def _published_one(path: Path, cwd: Path, env: dict[str, str], redis_url: str) -> None:
    """``atpctl events publish`` of ``path`` run in ``cwd`` with ``env``: one published, on ``redis_url``'s stream."""
    done = subprocess.run([sys.executable, "-m", "atp_client.ctl", "--json", "events", "publish", str(path),
                           "--stream", STREAM], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and json.loads(done.stdout)["published"] == 1, done.stderr
    assert stream_length(redis_url) == 1


def test_without_a_url_it_writes_to_the_redis_of_make_run(tmp_path: Path) -> None:
    """``make run``'s Redis takes a port and a password at each start, written to var/redis/redis.url
    only: atp-publisher reads that file when given no URL; this refused to run without one, the
    password then typed on a command line every user of the host reads (``ps``)."""
    embedded = EmbeddedRedis(tmp_path / "var" / "redis", password="made-at-start").start()
    try:
        path, env = _one_fact_without_a_url(tmp_path)
        _published_one(path, tmp_path, env, embedded.url)
        away = subprocess.run([sys.executable, "-m", "atp_client.ctl", "events", "publish", str(path)],
                              cwd=tmp_path / "var", env=env, capture_output=True, text=True, timeout=60)
        assert away.returncode == 2 and "var/redis/redis.url" in away.stderr, away.stderr  # no such file there
    finally:
        embedded.stop()


def test_a_stopped_make_run_leaves_no_url_of_a_redis_that_is_gone(tmp_path: Path) -> None:
    """``make run`` stopped left var/redis/redis.url naming its Redis, gone with it: `events publish` given no URL
    connected there and ended exit status 6, 'Error 111 connecting to 127.0.0.1:<port>', an address the user never
    gave (the next start takes another port and password, so it never comes back there). The stop removes the file:
    the run is told to give --redis-url (exit status 2). A start refused the directory (in use) leaves the running
    one's file be."""
    embedded = EmbeddedRedis(tmp_path / "var" / "redis", password="made-at-start").start()
    try:
        with pytest.raises(DataDirInUse):
            EmbeddedRedis(tmp_path / "var" / "redis", password="another").start()
        EmbeddedRedis(tmp_path / "var" / "redis").stop()  # never started: nothing of the running one's is its
        path, env = _one_fact_without_a_url(tmp_path)
        _published_one(path, tmp_path, env, embedded.url)
    finally:
        embedded.stop()
    assert not (tmp_path / "var" / "redis" / "redis.url").exists()
    done = subprocess.run([sys.executable, "-m", "atp_client.ctl", "events", "publish", str(path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "needs --redis-url" in done.stderr, (done.returncode, done.stderr)


def test_without_a_url_it_writes_to_the_redis_of_the_service_s_data_dir(tmp_path: Path) -> None:
    """The service started with ATP_DATA_DIR writes its embedded Redis's URL under that directory; atpctl, in the
    same environment, looked in var/redis/redis.url whatever ATP_DATA_DIR said: not found there (exit 2), or a stale
    file of another run found in its place, the facts written to another Redis than the service's."""
    embedded = EmbeddedRedis(tmp_path / "data" / "redis", password="made-at-start").start()
    try:
        path, env = _one_fact_without_a_url(tmp_path)
        _published_one(path, tmp_path, {**env, "ATP_DATA_DIR": str(tmp_path / "data")}, embedded.url)
    finally:
        embedded.stop()


class _LosesOneCancellation:
    """A pipeline whose ``execute`` loses the first cancellation and then waits for an answer that
    never comes, as redis-py's send does under Python 3.11: its ``asyncio.wait_for`` returns the
    send's result when that finishes in the same turn as the cancellation, and the read that follows
    waits out the socket timeout (seen in CI: a Ctrl-C reported as that timeout, exit 6)."""

    def __init__(self) -> None:
        self.writes = 0
        self.executing = asyncio.Event()  # the chunk is out: the cancellation is to land in ``execute``

    async def __aenter__(self) -> _LosesOneCancellation:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    def pipeline(self, transaction: bool) -> _LosesOneCancellation:
        return self

    def xadd(self, stream: str, fields: dict[str, Any]) -> None:
        self.writes += 1

    async def execute(self, raise_on_error: bool) -> list[Any]:
        self.executing.set()
        with contextlib.suppress(asyncio.CancelledError):  # lost, as the library loses it
            await asyncio.sleep(3600)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


async def test_a_ctrl_c_is_kept_when_the_redis_client_loses_the_cancellation() -> None:
    from atp_client._publish import write

    pipeline = _LosesOneCancellation()
    run = asyncio.ensure_future(write(pipeline, STREAM, [(1, {"a": 1}), (2, {"a": 2})], 10))
    # The chunk out, not a pause: a host that stalled the loop past a pause had the cancellation land before it.
    await asyncio.wait_for(pipeline.executing.wait(), 30)
    run.cancel()
    finished, _ = await asyncio.wait([run], timeout=30)  # the test's own bound: without the fix, an hour
    assert finished, "the interrupted write went on waiting for Redis"
    done = run.result()
    assert done.interrupted and done.in_doubt == 2 and done.stopped_at == 1, done


@pytest.mark.parametrize(("raw", "cluster"), [("on", True), ("TRUE", True), ("yes", True), ("off", False),
                                              (None, False)])
def test_atp_redis_cluster_is_read_as_the_service_reads_it(monkeypatch: pytest.MonkeyPatch, raw: str | None,
                                                            cluster: bool) -> None:
    """Only 1/true/yes were a cluster: `on`, which the service takes, wrote as to one Redis (MOVED)."""
    if raw is None:
        monkeypatch.delenv("ATP_REDIS_CLUSTER", raising=False)
    else:
        monkeypatch.setenv("ATP_REDIS_CLUSTER", raw)
    assert env_boolean("ATP_REDIS_CLUSTER", None) is cluster
    assert env_boolean("ATP_REDIS_CLUSTER", True) is True  # --redis-cluster given
    args = build_parser().parse_args(["events", "publish", __file__, "--no-redis-cluster"])  # as the service's flag
    assert env_boolean("ATP_REDIS_CLUSTER", args.redis_cluster) is False


def test_an_atp_redis_cluster_set_empty_is_refused_as_the_service_refuses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The service refuses `ATP_REDIS_CLUSTER=` (no boolean); atpctl took it as false, without a word, and wrote
    as to one Redis where the environment it shares with the service may name a cluster."""
    monkeypatch.setenv("ATP_REDIS_CLUSTER", "")
    said = r"cannot read '' as a boolean \(one of 1, true, yes, on, 0, false, no, off\)$"  # in the same words
    with pytest.raises(ValueError, match=rf"^ATP_REDIS_CLUSTER: {said}"):
        ServiceConfig.from_env({"ATP_REDIS_CLUSTER": ""})
    with pytest.raises(ValueError, match=rf"^ATP_REDIS_CLUSTER: {said}"):
        env_boolean("ATP_REDIS_CLUSTER", None)


def test_an_atp_redis_cluster_that_is_no_boolean_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    """`maybe` was taken as false without a word, where the service refuses it: exit 2, nothing sent."""
    path = tmp_path / "facts.jsonl"
    path.write_text(json.dumps(fact(0)) + "\n")
    done = subprocess.run([sys.executable, "-m", "atp_client.ctl", "events", "publish", str(path),
                           "--redis-url", "redis://127.0.0.1:1"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ATP_REDIS_CLUSTER": "maybe"})
    assert done.returncode == 2, (done.returncode, done.stderr)  # not 6: Redis was never asked
    assert "ATP_REDIS_CLUSTER: cannot read 'maybe' as a boolean" in done.stderr, done.stderr
