"""The two command-line tools as a person uses them: atp-service serve (demo estate) and atpctl."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
import redis
from google.protobuf import json_format
from google.protobuf.message_factory import GetMessageClass

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import EmbeddedRedis
from atp_service.edge.auth import new_token, token_hash
from tests.conftest import spawned
from tests.ports import held_port

pytestmark = pytest.mark.slow


Served = tuple[str, int, list[str]]
"""A demo service's gRPC target, metrics port and start-up log lines."""


def _serve_demo(redis_url: str, log: Path) -> tuple[subprocess.Popen[bytes], Served]:
    """`atp-service serve` with the demo estate, as `make run` starts it (but on free ports)."""
    port, metrics = held_port(), held_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "atp_service", "serve", "--redis-url", redis_url, "--port", str(port),
         "--metrics-port", str(metrics)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    return proc, (f"127.0.0.1:{port}", metrics, wait_until_ready(proc, log).splitlines())


@pytest.fixture
def served(redis_url: str, tmp_path: Path) -> Iterator[Served]:
    """A demo service of this test's own, fresh: for a test that checks the estate as loaded or
    the reservations the banner's and the README's commands make."""
    log = tmp_path / "serve.log"
    proc, answer = _serve_demo(redis_url, log)
    spawned(proc)
    yield answer
    proc.terminate()
    assert stop_or_explain(proc, log) == 0


@pytest.fixture(scope="module")
def shared_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, str]]:
    """One demo service (and its Redis URL) for the tests that each touch only keys, reservation
    ids, streams and channels of their own: loading the demo estate costs seconds a start. Its
    own Redis: ``redis_url`` flushes the session's Redis for every test."""
    directory = tmp_path_factory.mktemp("shared-demo")
    redis_server = EmbeddedRedis(directory / "redis", appendfsync="always").start()
    log = directory / "serve.log"
    proc: subprocess.Popen[bytes] | None = None
    try:  # not ``spawned``: that kill is per test, and this service outlives a test
        proc, answer = _serve_demo(redis_server.url, log)
        yield answer, redis_server.url
        proc.terminate()
        assert stop_or_explain(proc, log) == 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        redis_server.stop()


STOP_BOUND_S = 90  # the service's own shutdown bound (grace + final snapshot) and the embedded Redis's


def stop_or_explain(proc: subprocess.Popen[Any], log: Path | None = None) -> int:
    """Wait for a terminated service; if it overruns its bound, have it dump its tasks, then fail with that."""
    try:
        proc.communicate(timeout=STOP_BOUND_S)  # also drains a stdout pipe nobody reads any more
        return proc.returncode
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # the service logs what each task waits on
        time.sleep(2)
        proc.kill()
        out, _ = proc.communicate()
        text = (log.read_text() if log else "") + (out if isinstance(out, str) else (out or b"").decode())
        raise AssertionError(f"service did not stop within {STOP_BOUND_S}s:\n{text[-6000:]}") from None


def wait_until_ready(proc: subprocess.Popen[bytes], log: Path, limit_s: float = 60) -> str:
    """Until the service prints that it serves; returns the log so far."""
    return wait_for_line(proc, log, "ATP service ready", limit_s)


def wait_for_line(proc: subprocess.Popen[bytes], log: Path, text: str, limit_s: float = 60) -> str:
    """Until ``text`` is in the service's log (failing with its log if it exits first, or after
    ``limit_s``: a bound, not a timing); returns the log so far."""
    deadline = time.monotonic() + limit_s
    while text not in (so_far := log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, so_far
        time.sleep(0.05)
    return so_far


def serve(redis_url: str, log: Path, *flags: str,
          env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str, str]:
    """`atp-service serve` in a subprocess (``env``: settings added to this process's environment);
    returns it, its target and its start-up log once ready."""
    port = held_port()
    proc = spawned(subprocess.Popen(
        [sys.executable, "-m", "atp_service", "serve", "--redis-url", redis_url, "--port", str(port),
         "--metrics-port", "-1", "--no-demo", "--auth", "off", "--log-level", "INFO", *flags],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}))
    return proc, f"127.0.0.1:{port}", wait_until_ready(proc, log)


def iso(epoch_ms: int) -> str:
    """An epoch time in ms as proto JSON writes a Timestamp."""
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ctl(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "atp_client.ctl", "--target", target, *args],
                          capture_output=True, text=True, timeout=30)


def test_demo_estate_and_the_printed_examples_work(served: tuple[str, int, list[str]]) -> None:
    target, metrics_port, lines = served
    examples = [line.strip() for line in lines if "--target" in line]
    assert len(examples) == 3
    for example in examples:  # the three commands the banner prints, exactly
        args = example.split()[3:]
        done = ctl(target, *args)
        assert done.returncode == 0, done.stderr
    got = json.loads(ctl(target, "availability", "sku-00001@dc-east").stdout)
    assert got[0]["reserved"] == 0 and got[0]["committed"] == 2  # numbers, not proto JSON's strings
    assert got[0]["on_hand"] > 2
    stores = json.loads(ctl(target, "availability", *[f"sku-00042@store-{i:03d}" for i in range(1, 301)]).stdout)
    assert sum(p["on_hand"] > 0 for p in stores) > 30  # about a third of stores stock a SKU
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    for name in ("atp_rpc_duration_seconds_bucket", "atp_reservations_total", "atp_shard_mailbox_depth",
                 "atp_shard_batch_size", "atp_log_append_seconds", "atp_recovery_seconds"):
        assert name in body, name
    assert 'atp_rpc_duration_seconds_count{code="OK",method="Reserve"} 1.0' in body
    assert "atp_oversold_units 0.0" in body


def _banner_examples(lines: list[str]) -> list[list[str]]:
    """The atpctl commands a demo service's banner suggests, as arguments after ``--target TARGET``."""
    return [line.split()[3:] for line in lines if "--target" in line]


def test_the_banner_s_suggestions_work_on_every_start(redis_url: str, tmp_path: Path) -> None:
    """`make run` again: the banner's commands work on a second start too, after the first start's
    suggestions were followed through to the README's next step (the reservation fulfilled). The
    same id each start would be refused RESERVATION_FULFILLED there."""
    for start in range(2):
        log = tmp_path / f"serve-{start}.log"
        proc, (target, _, lines) = _serve_demo(redis_url, log)
        spawned(proc)
        try:
            examples = _banner_examples(lines)
            assert len(examples) == 3
            for args in examples:
                done = ctl(target, *args)
                assert done.returncode == 0, (start, args, done.stderr)
            reservation_id = examples[-1][-1]  # `confirm ID`
            assert ctl(target, "fulfil", reservation_id).returncode == 0  # the README's step after confirm
        finally:
            proc.terminate()
        assert stop_or_explain(proc, log) == 0


def test_atpctl_errors_name_the_status_and_reason_and_exit_by_class(shared_demo: tuple[Served, str]) -> None:
    (target, _, _), _ = shared_demo
    done = ctl(target, "confirm", "no-such-reservation")
    assert done.returncode == 4 and "NOT_FOUND RESERVATION_NOT_FOUND" in done.stderr
    done = ctl(target, "reserve", "x", "sku-00001@dc-east:0")
    assert done.returncode == 3 and "INVALID_ARGUMENT INVALID_FIELD: lines[0].quantity" in done.stderr
    assert ctl(target, "reserve", "y", "sku-00001@dc-east:1").returncode == 0
    done = ctl(target, "reserve", "y", "sku-00001@dc-east:2")
    assert done.returncode == 5 and "ALREADY_EXISTS RESERVATION_ID_REUSED" in done.stderr
    # Refusals are retried by gRPC (4 by default), decisions never; a service that is not there stays UNAVAILABLE.
    nobody = f"127.0.0.1:{held_port()}"
    done = ctl(nobody, "--retries", "2", "--timeout", "5", "availability", "sku-00001@dc-east")
    assert done.returncode == 6 and "UNAVAILABLE" in done.stderr
    done = ctl(target, "--retries", "0", "confirm", "no-such-reservation")
    assert done.returncode == 4 and "NOT_FOUND" in done.stderr
    assert subprocess.run([sys.executable, "-m", "atp_client.ctl", "--retries", "9", "confirm", "x"],
                          capture_output=True, text=True).returncode == 2  # gRPC tries at most 5 times


def test_atpctl_ends_quietly_when_its_reader_goes_away(shared_demo: tuple[Served, str]) -> None:
    """`atpctl ... | head`: the pipe closes under a long answer; no traceback, SIGPIPE's status."""
    (target, _, _), _ = shared_demo
    keys = [f"sku-{n:05d}@store-{s:03d}" for n in range(1, 11) for s in range(1, 101)]  # ~200 KB of JSON
    proc = subprocess.Popen([sys.executable, "-m", "atp_client.ctl", "--target", target, "availability", *keys],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(10)
    proc.stdout.close()
    assert proc.wait(timeout=30) == 141
    assert proc.stderr.read() == b""


def test_events_import_from_jsonl(shared_demo: tuple[Served, str], tmp_path: Path) -> None:
    (target, _, _), _ = shared_demo
    now = int(time.time() * 1000)
    facts = tmp_path / "facts.jsonl"
    facts.write_text("\n".join(json.dumps(f) for f in [
        {"eventId": "p1", "source": "pos-1", "kind": "FACT_KIND_RECEIPT", "sku": "NEW", "location": "store-001",
         "quantity": 5, "eventTime": iso(now - 1000)},
        {"eventId": "p2", "source": "pos-1", "kind": "FACT_KIND_SALE", "sku": "NEW", "location": "store-001",
         "quantity": 2, "eventTime": iso(now - 500)},
        {"eventId": "p3", "source": "pos-1", "kind": "FACT_KIND_SALE", "sku": "NEW", "location": "store-001",
         "quantity": 0, "eventTime": iso(now - 400)},
    ]))
    done = ctl(target, "events", "import", str(facts))
    assert done.returncode == 3, done.stderr  # one fact was invalid: the import says so
    assert json.loads(done.stdout) == {"FACT_OUTCOME_APPLIED": 2, "FACT_OUTCOME_INVALID": 1}
    assert "p3: FACT_OUTCOME_INVALID: events[2].quantity" in done.stderr
    got = json.loads(ctl(target, "availability", "NEW@store-001").stdout)
    assert got[0]["on_hand"] == 3


def test_publish_explain_and_safety_stock(shared_demo: tuple[Served, str], tmp_path: Path) -> None:
    (target, _, _), redis_url = shared_demo
    now = int(time.time() * 1000)
    facts = tmp_path / "pos.jsonl"
    facts.write_text("\n".join(json.dumps(f) for f in [
        {"eventId": "c1", "source": "wms", "kind": "FACT_KIND_COUNT", "sku": "PUB", "location": "dc-east",
         "quantity": 9, "eventTime": iso(now - 2000)},
        {"eventId": "s1", "source": "pos-7", "kind": "FACT_KIND_SALE", "sku": "PUB", "location": "dc-east",
         "quantity": 2, "eventTime": iso(now - 1000)},
    ]))
    done = subprocess.run([sys.executable, "-m", "atp_client.ctl", "events", "publish", str(facts),
                           "--redis-url", redis_url, "--stream", "atp:in:wms"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"stream": "atp:in:wms", "published": 2, "in_doubt": 0}
    deadline = time.monotonic() + 60  # a bound, not a timing: each look is a process, seconds on a loaded host
    while json.loads(ctl(target, "availability", "PUB@dc-east").stdout)[0]["on_hand"] != 7:
        assert time.monotonic() < deadline, "published facts were not applied"
        time.sleep(0.05)
    assert json.loads(ctl(target, "safety-stock", "PUB@dc-east", "3").stdout)["availability"]["available"] == 4
    explained = json.loads(ctl(target, "explain", "PUB@dc-east").stdout)
    assert explained["count_event_id"] == "c1" and explained["count_quantity"] == 9
    assert [(d["source"], d["delta"]) for d in explained["deltas_after_count"]] == [("pos-7", -2)]
    assert explained["availability"]["safety_stock"] == 3


def test_start_up_errors_name_the_setting(redis_url: str, tmp_path: Path) -> None:
    metrics_port = held_port()  # a service holding the ports, and its keyspace written (no demo estate: not needed)
    running, target, _ = serve(redis_url, tmp_path / "serve.log", "--metrics-port", str(metrics_port))
    port = target.rsplit(":", 1)[1]

    def start(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "atp_service", "serve", "--no-demo", "--auth", "off", *args],
                              capture_output=True, text=True, timeout=60)

    busy = start("--redis-url", redis_url, "--port", port, "--metrics-port", "-1")
    assert busy.returncode == 2 and "atp-service: --port: cannot listen" in busy.stderr  # as given: the flag
    busy = subprocess.run([sys.executable, "-m", "atp_service", "serve", "--no-demo", "--auth", "off", "--redis-url",
                           redis_url, "--metrics-port", "-1"], env={**os.environ, "ATP_PORT": port},
                          capture_output=True, text=True, timeout=60)
    assert busy.returncode == 2 and "atp-service: ATP_PORT: cannot listen" in busy.stderr  # the variable, not "port"
    busy = start("--redis-url", redis_url, "--port", "0", "--metrics-port", str(metrics_port))
    assert busy.returncode == 2 and "atp-service: --metrics-port: cannot listen" in busy.stderr
    other = start("--redis-url", redis_url, "--port", "0", "--metrics-port", "-1", "--shards", "3")
    assert other.returncode == 2 and "written with 16 shards, not 3" in other.stderr
    decoded = start("--redis-url", f"{redis_url}?decode_responses=True", "--port", "0", "--metrics-port", "-1")
    assert decoded.returncode == 2 and "atp-service: --redis-url: decode_responses" in decoded.stderr
    assert "Traceback" not in decoded.stderr
    holder = subprocess.Popen([sys.executable, "-m", "atp_service", "serve", "--no-demo", "--auth", "off",
                               "--port", "0", "--metrics-port", "-1", "--data-dir", str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert holder.stdout is not None
        while "ready" not in holder.stdout.readline():
            assert holder.poll() is None
        second = start("--port", "0", "--metrics-port", "-1", "--data-dir", str(tmp_path))
        assert second.returncode == 2 and "is in use by another running service" in second.stderr
    finally:
        holder.terminate()
        stop_or_explain(holder)
    running.terminate()
    assert stop_or_explain(running, tmp_path / "serve.log") == 0


def test_watch_reload_and_a_publisher_process(shared_demo: tuple[Served, str], tmp_path: Path) -> None:
    """The demo channels as an operator sees them: atpctl watch / reload-estate, atp-publisher (jsonl)."""
    (target, _, _), redis_url = shared_demo
    watched = ctl(target, "watch", "marketplace", "--snapshot", "--count", "3")
    assert watched.returncode == 0, watched.stderr
    lines = [json.loads(line) for line in watched.stdout.splitlines()]
    assert len(lines) == 3 and all(line["channel"] == "marketplace" and line["location"] == "" for line in lines)
    assert lines[0]["version"] >= 1
    assert lines[0]["status"] in ("STOCK_STATUS_IN_STOCK", "STOCK_STATUS_LOW_STOCK", "STOCK_STATUS_OUT_OF_STOCK")
    reloaded = json.loads(ctl(target, "reload-estate").stdout)
    assert [c["name"] for c in reloaded["channels"]] == ["marketplace", "store-pickup", "web"]
    unknown = ctl(target, "watch", "nope")
    assert unknown.returncode == 4 and "NOT_FOUND CHANNEL_NOT_FOUND" in unknown.stderr
    assert "marketplace" in unknown.stderr

    out = tmp_path / "marketplace.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "publishers.cli", "--channel", "marketplace", "--adapter", "jsonl", "--file", str(out),
         "--redis-url", redis_url, "--rate", "1000", "--metrics-port", "-1"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "publisher.log").open("wb"))
    try:
        deadline = time.monotonic() + 30
        while not out.exists() or len(out.read_text().splitlines()) < 10:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "publisher.log").read_text()
            time.sleep(0.1)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    first = json.loads(out.read_text().splitlines()[0])
    assert first["channel"] == "marketplace" and first["version"] >= 1 and "quantity" in first


def _blocks(path: Path, language: str) -> list[str]:
    """The fenced code blocks of ``language`` in a Markdown file."""
    parts = path.read_text().split("```")
    return [body.removeprefix(language).strip("\n") for body in parts[1::2] if body.startswith(language + "\n")]


def _commands(block: str, tool: str) -> list[list[str]]:
    """Each ``tool`` command of a shell block (a command goes on over a trailing backslash or an open
    quote), comments and redirections dropped."""
    commands, pending = [], ""
    for line in block.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        pending = ""
        if words and words[0] == tool:
            commands.append(words[:next((i for i, w in enumerate(words) if w in (">", ">>", "|")), len(words))])
    return commands


def _grpcurl(target: str, argv: list[str]) -> grpc.StatusCode:
    """What grpcurl does with these arguments, done with protobuf's JSON mapping (grpcurl's own)."""
    args, data = argv[1:], None
    if "-d" in args:
        data = args[args.index("-d") + 1]
        # The one command substitution the documents use, as the shell would make it: a fact stamped now.
        data = data.replace("$(date -u +%FT%TZ)", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    positional = [a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or args[i - 1] != "-d")]
    address, *rest = positional
    if rest[0] == "list":
        assert rest[1] in pb.DESCRIPTOR.services_by_name["AvailabilityService"].full_name
        return grpc.StatusCode.OK
    service_name, method_name = rest[0].rsplit("/", 1)
    method = pb.DESCRIPTOR.services_by_name[service_name.rsplit(".", 1)[1]].methods_by_name[method_name]
    request = json_format.Parse(data or "{}", GetMessageClass(method.input_type)())
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(f"/{service_name}/{method_name}", request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=GetMessageClass(method.output_type).FromString)
        try:
            call(request, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    assert address == "127.0.0.1:50051"  # what the documents say `make run` listens on
    return grpc.StatusCode.OK


def test_the_readme_and_api_examples_run_literally(served: tuple[str, int, list[str]], project_root: Path) -> None:
    """Every atpctl and grpcurl command of README.md and docs/API.md, against the demo service."""
    target, _, _ = served
    readme, api = project_root / "README.md", project_root / "docs" / "API.md"
    ran = 0
    for command in (c for block in _blocks(readme, "sh") for c in _commands(block, "atpctl")):
        done = ctl(target, *command[1:])
        assert done.returncode == 0, (command, done.stderr)
        ran += 1
    for path in (readme, api):
        for command in (c for block in _blocks(path, "sh") for c in _commands(block, "grpcurl")):
            expected = grpc.StatusCode.INVALID_ARGUMENT if "-format-error" in command else grpc.StatusCode.OK
            assert _grpcurl(target, command) == expected, command
            ran += 1
    assert ran >= 20


def test_the_embedded_redis_is_reached_over_its_unix_socket_and_keeps_what_was_acknowledged(tmp_path: Path) -> None:
    """`make run`'s set-up (no --redis-url): the service talks to its own redis-server over the unix
    socket in its data directory; what it acknowledged there is recovered after a restart."""
    port = held_port()
    argv = [sys.executable, "-m", "atp_service", "serve", "--data-dir", str(tmp_path / "data"), "--port", str(port),
            "--metrics-port", "-1", "--log-level", "INFO"]
    target, socket_path = f"127.0.0.1:{port}", (tmp_path / "data" / "redis" / "redis.sock").resolve()
    for run in range(2):
        log = tmp_path / f"serve-{run}.log"
        proc = spawned(subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT))
        try:
            assert f"embedded redis-server on unix://***@{socket_path}?db=0" in wait_until_ready(proc, log)
            if run == 0:
                reserved = ctl(target, "reserve", "unix-1", "sku-00001@dc-east:2", "--ttl", "600")
                assert reserved.returncode == 0 and '"RESERVATION_STATE_HELD"' in reserved.stdout, reserved.stderr
            else:
                got = ctl(target, "reservation", "unix-1")
                assert got.returncode == 0 and '"RESERVATION_STATE_HELD"' in got.stdout, got.stderr
        finally:
            proc.terminate()
            assert stop_or_explain(proc, log) == 0


def test_an_embedded_redis_that_dies_is_started_again_and_one_that_keeps_dying_stops_the_service(
        tmp_path: Path) -> None:
    """Killed under a running service (for memory, a crash), the embedded redis-server is started
    again on the same socket and the service answers as before, with what it acknowledged; past
    ``redis_restarts`` exits the service stops with exit status 5 instead of answering UNAVAILABLE
    for ever, and leaves no Redis behind."""
    port, data = held_port(), tmp_path / "data"
    log = tmp_path / "serve.log"
    proc = spawned(subprocess.Popen(
        [sys.executable, "-m", "atp_service", "serve", "--data-dir", str(data), "--port", str(port),
         "--metrics-port", "-1", "--auth", "off", "--log-level", "INFO", "--redis-restarts", "1"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT))
    target, pidfile = f"127.0.0.1:{port}", data / "redis" / "redis-server.pid"
    wait_until_ready(proc, log)
    reserved = ctl(target, "reserve", "dies-1", "sku-00001@dc-east:2", "--ttl", "600")
    assert reserved.returncode == 0 and '"RESERVATION_STATE_HELD"' in reserved.stdout, reserved.stderr
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    wait_for_line(proc, log, "embedded redis-server restarted")
    deadline = time.monotonic() + 60
    while (again := ctl(target, "reserve", "dies-2", "sku-00001@dc-east:2", "--ttl", "600")).returncode != 0:
        retryable = "UNAVAILABLE" in again.stderr or "DEADLINE_EXCEEDED" in again.stderr  # shards settling
        assert retryable and time.monotonic() < deadline, again.stderr
        time.sleep(0.5)
    assert '"RESERVATION_STATE_HELD"' in again.stdout
    kept = ctl(target, "reservation", "dies-1")
    assert kept.returncode == 0 and '"RESERVATION_STATE_HELD"' in kept.stdout, kept.stderr
    redis_pid = int(pidfile.read_text())
    os.kill(redis_pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == 5, log.read_text()[-4000:]
    assert "stopping (exit status 5): the embedded redis-server was killed by SIGKILL: 2 exits within 600s, " \
           "more than redis_restarts=1" in log.read_text()
    assert not Path(f"/proc/{redis_pid}").exists()


SLOW_DEMO = ("--max-rows-per-load", "100")
"""The demo estate loaded a hundred counts a block (~1,000 blocks): seconds, as long as a load of one fact at a time
took, for a test whose signal must come while it loads. In blocks of 20,000 it takes about a second."""


def test_an_embedded_redis_lost_while_the_demo_estate_loads_stops_the_service_with_exit_5(tmp_path: Path) -> None:
    """No restarts allowed: the service stops as for a signal, saying why first, instead of a
    traceback once the demo's load gives up."""
    data, log = tmp_path / "data", tmp_path / "serve.log"
    proc = spawned(subprocess.Popen(
        [sys.executable, "-m", "atp_service", "serve", "--data-dir", str(data), "--port", str(held_port()),
         "--metrics-port", "-1", "--auth", "off", "--log-level", "INFO", "--redis-restarts", "0", *SLOW_DEMO],
        stdout=log.open("wb"), stderr=subprocess.STDOUT))
    wait_for_line(proc, log, "loading the demo estate")  # ~1,000 blocks: seconds
    os.kill(int((data / "redis" / "redis-server.pid").read_text()), signal.SIGKILL)
    assert proc.wait(timeout=60) == 5, log.read_text()[-4000:]
    text = log.read_text()
    assert "stopping (exit status 5): the embedded redis-server was killed by SIGKILL: 1 exits" in text
    assert "the demo estate's load is abandoned: its Redis is lost" in text and "Traceback" not in text


def test_a_stop_signal_while_the_demo_estate_loads_lets_it_finish(tmp_path: Path) -> None:
    """Half a demo estate would stay half: the next start finds a logged keyspace and loads none."""
    port, data, log = held_port(), tmp_path / "data", tmp_path / "serve.log"
    argv = [sys.executable, "-m", "atp_service", "serve", "--data-dir", str(data), "--port", str(port),
            "--metrics-port", "-1", "--auth", "off", "--log-level", "INFO", *SLOW_DEMO]
    proc = spawned(subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT))
    wait_for_line(proc, log, "loading the demo estate")  # ~1,000 blocks: seconds
    proc.send_signal(signal.SIGTERM)
    assert stop_or_explain(proc, log) == 0
    text = log.read_text()
    assert "stop signal: the demo estate's load finishes first; another signal exits at once" in text
    assert "demo estate loaded" in text and "ATP service ready" not in text
    again = spawned(subprocess.Popen(argv, stdout=(tmp_path / "again.log").open("wb"), stderr=subprocess.STDOUT))
    try:
        wait_until_ready(again, tmp_path / "again.log")
        last = ctl(f"127.0.0.1:{port}", "availability", "sku-01000@dc-west")  # the demo's last DC position
        assert last.returncode == 0, last.stderr
        assert json.loads(last.stdout)[0]["on_hand"] >= 200  # every DC count of the demo is at least 200
    finally:
        again.terminate()
        assert stop_or_explain(again, tmp_path / "again.log") == 0


def test_the_embedded_redis_lets_in_only_those_holding_its_password(tmp_path: Path) -> None:
    """A service with auth on refuses a caller without a token; its embedded redis-server listened
    on 127.0.0.1 without a password beside it, so any process of any user on the host could write
    the service's logs, its claims and its input streams there, token or not. Now it takes only a
    password made at each start, kept in ``redis.url`` (owner only, for atp-publisher) and never logged."""
    token, callers, port = new_token(), tmp_path / "callers.toml", held_port()
    callers.write_text(f'[[callers]]\nname = "oms"\nroles = ["oms"]\ntoken_sha256 = "{token_hash(token)}"\n')
    data, log = tmp_path / "data", tmp_path / "serve.log"
    proc = spawned(subprocess.Popen(
        [sys.executable, "-m", "atp_service", "serve", "--data-dir", str(data), "--port", str(port),
         "--metrics-port", "-1", "--no-demo", "--auth", "on", "--callers-file", str(callers), "--log-level", "INFO"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT))
    try:
        wait_until_ready(proc, log)
        assert ctl(f"127.0.0.1:{port}", "reservation", "r1").returncode != 0  # no token: refused at gRPC
        url_file = data / "redis" / "redis.url"
        url = url_file.read_text().strip()
        with redis.Redis(host="127.0.0.1", port=urlsplit(url).port, socket_timeout=5) as stranger, \
                pytest.raises(redis.AuthenticationError):
            stranger.set("atp:intruder", "1")  # written, before: no password asked
        assert url_file.stat().st_mode & 0o077 == 0
        password = urlsplit(url).password
        assert password, url
        with redis.Redis.from_url(url, socket_timeout=5) as told:  # atp-publisher's way in
            assert told.ping()
    finally:
        proc.terminate()
        assert stop_or_explain(proc, log) == 0
    assert password not in log.read_text()


def test_a_routing_table_past_max_message_bytes_stops_the_start(redis_url: str) -> None:
    """1024 groups at a Kubernetes DNS address pass 64 KiB: GetRouting, which has no pages, was refused
    naming the limit at every call, and routing clients had no table. The start is refused instead,
    naming the limit and the groups (exit status 2, as for every setting that cannot work)."""
    address = "atp-service-0.atp-service-headless.inventory-prod.svc.cluster.local:50051"
    done = subprocess.run([sys.executable, "-m", "atp_service", "serve", "--no-demo", "--auth", "off", "--redis-url",
                           redis_url, "--port", "0", "--metrics-port", "-1", "--shards", "1024", "--max-message-bytes",
                           "65536", "--advertise-address", address], capture_output=True, text=True, timeout=90)
    assert done.returncode == 2, done.stderr[-3000:]
    said = done.stderr.splitlines()[-1]
    assert said.startswith("atp-service: --max-message-bytes: GetRouting's answer, 1024 groups (shards)"), said
    assert address in said and "--max-message-bytes=65536" in said
