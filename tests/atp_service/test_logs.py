"""Log lines as an operator's pipeline reads them: JSON objects with time, level, logger, message
and the line's fields; text lines that read as before with the fields after; the level obeyed."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from atp_service.edge.auth import new_token, token_hash
from atp_service.logs import EveryInterval, noted_now_and_then, set_up_logging
from tests.atp_service.app.test_cli import stop_or_explain, wait_until_ready
from tests.atp_service.refusals import told
from tests.conftest import ServiceFactory, spawned
from tests.ports import held_port


@pytest.fixture
def logged() -> Iterator[Any]:
    """``set_up_logging`` onto a buffer; returns a function that sets it up and gives the buffer.
    The root logger's handlers and level are put back after (pytest's own capture among them)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def set_up(level: str, log_format: str) -> io.StringIO:
        buffer = io.StringIO()
        set_up_logging(level, log_format, buffer)
        return buffer

    yield set_up
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_time_level_logger_message_and_fields(logged: Any) -> None:
    buffer = logged("INFO", "json")
    logging.getLogger("atp_service.test").warning("shard %d slow", 3, extra={"shard": 3, "duration_ms": 12})
    line = json.loads(buffer.getvalue())
    assert {k: line[k] for k in ("level", "logger", "message", "shard", "duration_ms")} == {
        "level": "WARNING", "logger": "atp_service.test", "message": "shard 3 slow", "shard": 3, "duration_ms": 12}
    stamp = datetime.fromisoformat(line["time"])
    assert stamp.utcoffset() == UTC.utcoffset(None)
    assert set(line) == {"time", "level", "logger", "message", "shard", "duration_ms"}


def test_text_lines_read_as_before_with_the_fields_after_the_message(logged: Any) -> None:
    buffer = logged("INFO", "text")
    log = logging.getLogger("atp_service.test")
    log.info("plain line")
    log.warning("call denied", extra={"rpc": "Reserve", "caller": "-", "reason": "authorization: missing"})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed", extra={"shard": 2})
    lines = buffer.getvalue().splitlines()
    assert lines[0].endswith(" INFO atp_service.test: plain line")
    assert lines[1].endswith(' WARNING atp_service.test: call denied rpc=Reserve caller=- '
                             'reason="authorization: missing"')
    assert lines[2].endswith(" ERROR atp_service.test: failed shard=2")  # the fields before the traceback
    assert lines[-1] == "RuntimeError: boom"


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_grpc_s_error_for_an_answer_whose_caller_was_gone_is_told_at_debug_without_its_traceback(
        logged: Any, level: str) -> None:
    """gRPC's asyncio server logs an answer it could not send (its caller's deadline passed first) at ERROR,
    with a traceback: at DEBUG here, one line; any other error of gRPC's stays as it was."""
    buffer = logged(level, "text")
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    try:
        raise RuntimeError("Failed \"execute_batch\"")
    except RuntimeError:
        grpc_log.exception("ExecuteBatchError raised in core by servicer method [%s]", "/atp.v1.Service/Reserve")
        grpc_log.exception("Unexpected [%s] raised by servicer method [%s]", "KeyError", "/atp.v1.Service/Reserve")
    lines = buffer.getvalue()
    assert "ERROR grpc._cython.cygrpc: Unexpected [KeyError]" in lines and "Traceback" in lines
    undelivered = [line for line in lines.splitlines() if "ExecuteBatchError raised in core" in line]
    assert len(undelivered) == (0 if level == "INFO" else 1)
    assert all(" DEBUG grpc._cython.cygrpc: ExecuteBatchError" in line for line in undelivered)
    assert lines.count("Traceback") == 1


def test_the_level_hides_what_is_less_severe(logged: Any) -> None:
    buffer = logged("WARNING", "json")
    log = logging.getLogger("atp_service.test")
    log.info("not written")
    log.warning("written")
    assert [json.loads(line)["message"] for line in buffer.getvalue().splitlines()] == ["written"]


async def test_an_audit_line_of_a_denied_call_is_a_json_object_with_its_fields(
        start_service: ServiceFactory, tmp_path: Path, logged: Any) -> None:
    # Its audit lines' allowance is this service's own: earlier tests' denials in the process spent none of it.
    callers = tmp_path / "callers.toml"
    callers.write_text(f'[[callers]]\nname = "oms"\nroles = ["oms"]\ntoken_sha256 = "{token_hash(new_token())}"\n')
    _, anonymous = await start_service(auth="on", callers_file=callers)
    buffer = logged("INFO", "json")
    assert await told(anonymous.reserve("r1", [("A", "L", 1)])) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    audit = [line for line in lines if line["logger"] == "atp_service.audit"]
    assert len(audit) == 1
    assert {k: audit[0][k] for k in ("level", "message", "event", "rpc", "caller", "code")} == {
        "level": "WARNING", "message": "call denied", "event": "auth_denied", "rpc": "Reserve", "caller": "-",
        "code": "UNAUTHENTICATED"}
    assert "authorization: missing" in audit[0]["reason"]


def test_the_service_writes_json_at_the_level_its_variables_set(redis_url: str, tmp_path: Path) -> None:
    out, log = tmp_path / "serve.out", tmp_path / "serve.log"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ATP_")},
           "ATP_LOG_FORMAT": "json", "ATP_LOG_LEVEL": "WARNING", "ATP_REDIS_URL": redis_url}
    proc = spawned(subprocess.Popen(
        [sys.executable, "-m", "atp_service", "serve", "--port", str(held_port()), "--metrics-port", "-1",
         "--no-demo", "--auth", "off", "--shards", "2"],
        stdout=out.open("wb"), stderr=log.open("wb"), env=env))
    wait_until_ready(proc, out)  # the banner, on standard output; the log is standard error
    proc.terminate()
    assert stop_or_explain(proc) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines and all(line["level"] in ("WARNING", "ERROR") for line in lines)
    assert any(line["message"].startswith("auth off") for line in lines)


def test_every_interval_writes_one_line_per_interval_and_says_how_many_were_left_out() -> None:
    now = [100.0]
    lines = EveryInterval(10.0, clock=lambda: now[0])
    assert lines.due() == 0  # the first line at once
    assert [lines.due() for _ in range(500)] == [None] * 500
    now[0] += 9.9
    assert lines.due() is None
    now[0] += 0.1
    assert lines.due() == 501
    assert lines.due() is None and lines.left_out == 1


def test_every_interval_again_writes_the_next_line_at_once_with_the_count_left_out_before_it() -> None:
    """``again`` (a publisher's replicas confirmed a read, ``publishers._replicas``): the next line is the start of
    a new fault, written at once, still saying the lines left out of the last one."""
    now = [100.0]
    lines = EveryInterval(60.0, clock=lambda: now[0])
    assert (lines.due(), lines.due(), lines.due()) == (0, None, None)
    lines.again()
    now[0] += 1.0
    assert (lines.due(), lines.due()) == (2, None)


def test_a_lasting_wait_is_noted_at_its_first_failure_then_at_most_once_a_period_each_failure_counted() -> None:
    now = [100.0]
    noted: list[str] = []
    counted: list[str] = []
    on_error = noted_now_and_then(lambda exc, _wait: noted.append(str(exc)), 30.0,
                                  lambda exc, _wait: counted.append(str(exc)), clock=lambda: now[0])
    for i, t in enumerate([100.0, 110.0, 129.9, 130.0, 131.0, 175.0]):
        now[0] = t
        on_error(ConnectionError(f"down {i}"), 0.5)
    assert noted == ["down 0", "down 3", "down 5"]
    assert counted == [f"down {i}" for i in range(6)]


def test_every_interval_gives_a_line_its_fields_with_how_many_were_left_out() -> None:
    """``EveryInterval.fields``: the ``extra`` the rate-limited lines wrote themselves — the event first, its fields,
    ``left_out`` only where lines were left out before it; None for a line left out."""
    now = [100.0]
    lines = EveryInterval(10.0, clock=lambda: now[0])
    first = lines.fields(event="x_failed", shard=1, reason="timeout")
    assert first is not None and list(first.items()) == [("event", "x_failed"), ("shard", 1), ("reason", "timeout")]
    assert [lines.fields(event="x_failed", shard=1, reason="r") for _ in range(3)] == [None] * 3
    now[0] += 10.0
    assert lines.fields(event="x_failed", shard=2, reason="r") == {"event": "x_failed", "shard": 2, "reason": "r",
                                                                   "left_out": 3}
