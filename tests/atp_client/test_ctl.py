"""``atpctl`` as an operator runs it (a process of its own) against a real service on a real Redis."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from atp_client import _args as arg
from atp_client import timestamp
from atp_client.ctl import build_parser, main
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.edge.auth import load_callers, token_hash
from tests.atp_service.channel_helpers import fact, write_estate
from tests.conftest import ServiceFactory
from tests.waiting import until


def ctl(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "atp_client.ctl", "--target", target, *args],
                          capture_output=True, text=True, timeout=60)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def receipt(n: int, at_ms: int) -> str:
    return json.dumps({"eventId": f"in-{n}", "source": "wms", "kind": "FACT_KIND_RECEIPT", "sku": "IMP",
                       "location": "DC", "quantity": 1, "eventTime": iso(at_ms)})


async def test_an_events_file_with_a_line_that_cannot_be_read_is_not_half_imported(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    """A bad line far into the file must stop the import before anything is sent, not after the
    chunks before it were applied: the operator is told the file is refused, and it was."""
    service, client = await start_service()
    now = int(time.time() * 1000)
    facts = tmp_path / "facts.jsonl"
    lines = [receipt(n, now - 1000) for n in range(1500)]
    lines[1200] = lines[1200].replace('"quantity": 1', '"quantity": "one"')
    facts.write_text("\n".join(lines) + "\n")
    done = await asyncio.to_thread(ctl, f"127.0.0.1:{service.port}", "events", "import", str(facts))
    assert done.returncode != 0 and f"{facts}:1201:" in done.stderr and "quantity" in done.stderr, done.stderr
    (position,) = await client.availability([("IMP", "DC")])
    assert position.on_hand == 0  # nothing of the refused file applied


@pytest.mark.parametrize(("args", "named"), [
    (["reserve", "r1", "A@L:99999999999999999999"], "SKU@LOCATION:QTY"),
    (["release", "r1", "A@L:-99999999999999999999", "--operation-id", "o1"], "SKU@LOCATION:QTY"),
    (["safety-stock", "A@L", "99999999999999999999"], "quantity"),
    # More than one '@': which ends the SKU is not known (it was split at the first, another position asked).
    (["availability", "A@B@L"], "SKU@LOCATION"),
    (["safety-stock", "A@B@L", "1"], "SKU@LOCATION"),
    (["reserve", "r1", "A@B@L:1"], "SKU@LOCATION:QTY"),
    (["release", "r1", "A@@L:1", "--operation-id", "o1"], "SKU@LOCATION:QTY"),
    (["reserve", "r1", "A@L:1", "--ttl", "99999999999999999999"], "--ttl"),
    (["watch", "web", "--since", "-1"], "--since"),
    (["watch", "web", "--count", "-1"], "--count"),
    (["watch", "web", "--snapshot", "--since", "5"], "--since"),
    (["--timeout", "0", "availability", "A@L"], "--timeout"),
    (["--timeout", "-5", "availability", "A@L"], "--timeout"),
    (["--timeout", "nan", "availability", "A@L"], "--timeout"),
    (["events", "import", "/nonexistent/facts.jsonl"], "file"),
    (["stock", "load", "/nonexistent/counts.csv"], "file"),
    (["--tls-ca", "/nonexistent/ca.pem", "availability", "A@L"], "--tls-ca"),
    (["--target", "", "availability", "A@L"], "--target"),
    (["--target", "http://127.0.0.1:50051", "availability", "A@L"], "--target"),
    (["--target", "127.0.0.1:abc", "availability", "A@L"], "--target"),
    (["--target", "127.0.0.1:99999", "availability", "A@L"], "--target"),
    (["--target", "127.0.0.1:", "availability", "A@L"], "--target"),
    (["--target", "dns:///localhost:port", "availability", "A@L"], "--target"),
    (["--target", "ipv4:127.0.0.1", "availability", "A@L"], "--target"),
])
def test_an_argument_out_of_range_is_a_usage_error_naming_it(args: list[str], named: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Bad input on the command line is exit 2 naming the argument, before anything is sent — not a
    traceback, nor the exit status of a service unavailable (6, "retry later") for a call never made."""
    with pytest.raises(SystemExit) as exited:
        main(["--target", "127.0.0.1:1", "--retries", "0", *args])
    assert exited.value.code == 2
    assert f"argument {named}:" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["", "http://127.0.0.1:50051", "127.0.0.1:99999"])
def test_a_target_from_atp_target_that_cannot_be_dialled_is_refused_naming_the_variable(
        target: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Set in ATP_TARGET, such a target was refused as 'argument --target: ...', a flag the operator never typed."""
    monkeypatch.setenv("ATP_TARGET", target)
    with pytest.raises(SystemExit) as exited:
        main(["--retries", "0", "availability", "A@L"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "atpctl: error: ATP_TARGET: " in err and "argument --target" not in err, err
    with pytest.raises(SystemExit):  # the flag wins over the variable, and is named
        main(["--target", "127.0.0.1:", "availability", "A@L"])
    assert "argument --target: " in capsys.readouterr().err


def test_the_parser_s_target_is_the_one_to_dial_without_a_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    """``atp_client.ctl.build_parser`` (exported) parsed ``target`` as ATP_TARGET's, else 127.0.0.1:50051; a caller
    dialling ``args.target`` got None once the variable was read in ``main`` alone (to name it in a refusal)."""
    monkeypatch.delenv("ATP_TARGET", raising=False)
    assert build_parser().parse_args(["availability", "A@L"]).target == "127.0.0.1:50051"
    monkeypatch.setenv("ATP_TARGET", "10.0.0.5:50051")
    assert build_parser().parse_args(["availability", "A@L"]).target == "10.0.0.5:50051"
    assert build_parser().parse_args(["--target", "10.0.0.6:1", "availability", "A@L"]).target == "10.0.0.6:1"


@pytest.mark.parametrize("target", ["127.0.0.1:50051", "localhost", "dns:///atp.internal:443", "dns:127.0.0.1:1",
                                    "[::1]:50051", "::1", "ipv6:[::1]:1,[::1]:2", "unix:/run/atp.sock",
                                    "unix-abstract:atp", "xds:///atp"])
def test_every_target_form_grpc_takes_is_taken(target: str) -> None:
    """A malformed ``--target`` is refused (above), and only what is surely wrong: gRPC's other forms pass."""
    assert arg.target(target) == target


def test_a_command_that_dials_nothing_runs_whatever_the_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", "http://127.0.0.1:50051", "token", "new", "n", "--roles", "oms"]) == 0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from atp_service.app.certs import make_certs
    out = make_certs(tmp_path_factory.mktemp("certs"))
    (out / "not.pem").write_text("not a certificate\n")
    return out


@pytest.mark.parametrize(("ca", "cert", "key", "named"), [
    ("not.pem", None, None, "--tls-ca"),
    ("client.key", None, None, "--tls-ca"),  # a key where the CA goes
    ("ca.pem", "not.pem", "client.key", "--tls-cert"),
    ("ca.pem", "client.pem", "not.pem", "--tls-key"),
    ("ca.pem", "client.pem", "server.key", "--tls-key"),  # another certificate's key
])
def test_a_tls_file_grpc_cannot_use_is_a_usage_error_naming_it(
        certs: Path, ca: str, cert: str | None, key: str | None, named: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A file that is no PEM certificate (or key of it) was handed to gRPC, which logged errors of its own naming
    no argument and failed every call UNAVAILABLE: exit 6, "retry later", for a file that no retry fixes."""
    given = [f"--tls-{name}={certs / file}" for name, file in (("ca", ca), ("cert", cert), ("key", key)) if file]
    with pytest.raises(SystemExit) as exited:
        main(["--target", "127.0.0.1:1", "--retries", "0", "--timeout", "1", *given, "availability", "A@L"])
    assert exited.value.code == 2
    assert f"argument {named}:" in capsys.readouterr().err


def test_tls_files_that_are_right_are_taken(certs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", "127.0.0.1:1", "--retries", "0", "--timeout", "1", f"--tls-ca={certs / 'ca.pem'}",
                 f"--tls-cert={certs / 'client.pem'}", f"--tls-key={certs / 'client.key'}", "availability", "A@L"]) == 6
    assert "NOT_CONNECTED" in capsys.readouterr().err  # dialled: nothing listens there


CHOSEN = "the-name-authors-token"


@pytest.mark.parametrize("name", [
    f'x"\nroles = ["admin"]\ntoken_sha256 = "{token_hash(CHOSEN)}"\n[[callers]]\nname = "y',
    'caf\u00e9 \\ \x7f\t\U0001f600',
])
def test_token_new_writes_a_name_as_one_toml_string_never_as_more_entries(
        name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The name went into the entry between quotes as it was: a name holding a quote and new lines
    (from a provisioning form, say) wrote further keys and entries — here an admin caller whose token
    the name's author chose — into the callers file the operator pastes it into."""
    assert main(["token", "new", name, "--roles", "channel"]) == 0
    printed = capsys.readouterr()
    (tmp_path / "callers.toml").write_text(printed.out)
    callers = load_callers(tmp_path / "callers.toml")
    assert len(callers) == 1 and callers.lookup(CHOSEN) is None
    caller = callers.lookup(printed.err.splitlines()[-1])  # the token: its last line
    assert caller is not None and (caller.name, caller.roles) == (name, frozenset({"channel"}))


def test_token_new_refuses_an_empty_name_the_callers_file_would_refuse(capsys: pytest.CaptureFixture[str]) -> None:
    """An entry with ``name = ""`` was printed (exit 0, a token shown): the callers file it was appended to was
    then refused whole (``callers[n].name: must be a non-empty string``), the service's next start or reload
    with it. A usage error naming the argument instead, no token made."""
    with pytest.raises(SystemExit) as exited:
        main(["token", "new", "", "--roles", "oms"])
    printed = capsys.readouterr()
    assert exited.value.code == 2 and "argument name:" in printed.err and printed.out == "", printed


@pytest.mark.parametrize("line", ["5", "null", "[1]", '"a fact"'])
@pytest.mark.parametrize("command", [["events", "import"], ["events", "publish", "--redis-url", "redis://127.0.0.1:1"]])
def test_a_line_that_is_json_but_no_object_is_refused_naming_its_line(
        command: list[str], line: str, tmp_path: Path) -> None:
    """``5`` or ``null`` on a line (a stray value, a bad export) is no fact: the file is refused naming
    the line, as for any other line that cannot be read — not a traceback of the JSON parser."""
    facts = tmp_path / "facts.jsonl"
    facts.write_text(receipt(1, int(time.time() * 1000)) + f"\n{line}\n")
    done = subprocess.run([sys.executable, "-m", "atp_client.ctl", "--target", "127.0.0.1:1", "--retries", "0",
                           *command[:2], str(facts), *command[2:]], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert f"{facts}:2: " in done.stderr and "JSON object" in done.stderr, done.stderr


@pytest.mark.parametrize(("command", "content", "said"), [
    (["events", "import"], '{"eventId": "e1", "quantity": "one"}\n', ":1: "),
    (["events", "publish", "--redis-url", "redis://127.0.0.1:1"], '{"eventId": "e1", "quantity": "one"}\n', ":1: "),
    (["events", "publish", "--redis-url", "redis://127.0.0.1:1"], '{"eventId": "e1"}\n', ":1: source:"),
    (["stock", "load"], "sku;location;on_hand\nA;S1;5\n", "header: missing column(s)"),
    (["stock", "load"], "sku,location,on_hand,on_hand\nA,S1,5,6\n", "named more than once"),
])
def test_a_file_that_cannot_be_read_is_the_invalid_input_status_naming_what(
        command: list[str], content: str, said: str, tmp_path: Path) -> None:
    """A bad line or header is invalid input (exit 3, as the service's INVALID_ARGUMENT), not the
    status of "failed otherwise" (1): a script running the nightly load tells a file to fix from a
    tool or service to look at by the status alone."""
    path = tmp_path / "input"
    path.write_text(content)
    done = subprocess.run([sys.executable, "-m", "atp_client.ctl", "--target", "127.0.0.1:1", "--retries", "0",
                           *command[:2], str(path), *command[2:]], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    assert f"atpctl: {path}" in done.stderr and said in done.stderr, done.stderr


def test_a_time_of_the_extract_that_cannot_be_read_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "counts.csv"
    path.write_text("sku,location,on_hand\nA,S1,5\n")
    done = subprocess.run([sys.executable, "-m", "atp_client.ctl", "--target", "127.0.0.1:1", "stock", "load",
                           str(path), "--as-of", "yesterday"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "argument --as-of:" in done.stderr, (done.returncode, done.stderr)


async def test_an_import_with_a_quarantined_fact_says_it_was_not_applied_and_exits_3(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    """A fact older than the grace window is quarantined (E6): not applied. ``stock load`` says so
    (exit 3, the rows in its report); ``events import`` exited 0, so a replayed day of sales that the
    service set aside passed for loaded, and on_hand stayed too high with nothing said."""
    service, client = await start_service()
    now = service.clock.now_ms()
    await client.record_events([pb.Fact(event_id="first", source="wms", kind=pb.FACT_KIND_RECEIPT, sku="IMP",
                                        location="DC", quantity=1, event_time=timestamp(now))])
    facts = tmp_path / "facts.jsonl"
    facts.write_text(receipt(1, now) + "\n" + receipt(2, now - 7 * 24 * 3_600_000) + "\n")
    done = await asyncio.to_thread(ctl, f"127.0.0.1:{service.port}", "--json", "events", "import", str(facts))
    assert done.returncode == 3, (done.returncode, done.stdout, done.stderr)
    summary = json.loads(done.stdout)
    assert summary["FACT_OUTCOME_APPLIED"] == 1 and summary["FACT_OUTCOME_QUARANTINED"] == 1, summary
    assert "in-2: FACT_OUTCOME_QUARANTINED" in done.stderr and "1 facts not applied" in done.stderr, done.stderr


def test_events_publish_without_a_redis_to_write_to_is_a_usage_error(tmp_path: Path) -> None:
    """Run where no var/redis/redis.url is: run in the checkout, it found the file a `make run` there wrote (one
    running, or one killed, whose file stays) and published the empty file to that Redis, exit status 0."""
    path = tmp_path / "facts.jsonl"
    path.write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("ATP_REDIS_URL", "ATP_DATA_DIR")}
    done = subprocess.run([sys.executable, "-m", "atp_client.ctl", "events", "publish", str(path)],
                          capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert done.returncode == 2 and "--redis-url" in done.stderr, (done.returncode, done.stderr)


@pytest.mark.parametrize("command", [["events", "import"], ["events", "publish", "--redis-url", "redis://127.0.0.1:1"]])
def test_a_line_with_bytes_that_are_not_utf8_is_refused_naming_its_line(command: list[str], tmp_path: Path) -> None:
    """A JSONL file is UTF-8 (RFC 8259); a Latin-1 byte on line 2 (an export from an old till) is a line
    that cannot be read like any other: refused naming it, exit 3 — not a traceback of the decoder
    naming no line, exit 1, as if the tool had broken."""
    facts = tmp_path / "facts.jsonl"
    facts.write_bytes(receipt(1, int(time.time() * 1000)).encode() + b"\n"
                      + receipt(2, int(time.time() * 1000)).replace("IMP", "CAF\xc9").encode("latin-1") + b"\n")
    done = subprocess.run([sys.executable, "-m", "atp_client.ctl", "--target", "127.0.0.1:1", "--retries", "0",
                           *command[:2], str(facts), *command[2:]], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    assert f"{facts}:2: " in done.stderr and "UTF-8" in done.stderr, done.stderr


async def test_an_events_file_is_read_as_utf8_whatever_the_locale(start_service: ServiceFactory,
                                                                  tmp_path: Path) -> None:
    """The file's text does not depend on the shell's locale: under ``LC_ALL=C`` (a cron job, a
    container without locales) a SKU with an accent is imported as that SKU, not refused by an ASCII
    decoder (nor, under a Latin-1 locale, imported as another SKU spelt in mojibake)."""
    service, client = await start_service()
    facts = tmp_path / "facts.jsonl"
    facts.write_text(receipt(1, service.clock.now_ms()).replace("IMP", "CAFÉ") + "\n", encoding="utf-8")
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "atp_client.ctl", "--target",
                                                    f"127.0.0.1:{service.port}", "events", "import", str(facts)],
                                   capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, (done.returncode, done.stderr)
    (position,) = await client.availability([("CAFÉ", "DC")])
    assert position.on_hand == 1


@pytest.mark.parametrize("url", ["redis//127.0.0.1:6379", "redis://:s3cret@127.0.0.1:port",
                                 "redis://:s3cret#1@127.0.0.1:6379", "redis://:s3cret/1@127.0.0.1:6379"])
def test_a_redis_url_that_cannot_be_read_is_a_usage_error_that_does_not_show_it(url: str, tmp_path: Path) -> None:
    """A mistyped ``--redis-url`` is a bad command line (exit 2 naming the argument), not a traceback
    of the Redis client (exit 1); the URL itself is not repeated: it may carry the password. A password holding an
    unencoded '#' or '/' ends the authority there, its start read as the port, which Python's words quoted."""
    facts = tmp_path / "facts.jsonl"
    facts.write_text(receipt(1, int(time.time() * 1000)) + "\n")
    done = subprocess.run([sys.executable, "-m", "atp_client.ctl", "events", "publish", str(facts),
                           "--redis-url", url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    assert "argument --redis-url:" in done.stderr and "s3cret" not in done.stderr, done.stderr


async def test_watch_prints_the_snapshot_up_to_its_count_and_names_a_bad_channel(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    """``atpctl watch`` over ``AtpClient.watch``: one JSON line an update, ended at ``--count``; a channel the
    service does not have exits 4 naming it, an empty one exits 3 naming the field, refused before it is sent."""
    service, client = await start_service(estate=write_estate(tmp_path))
    now = int(time.time() * 1000)
    await client.record_events([fact(f"c{n}", "COUNT", f"sku-{n}", "dc-1", 5 + n, now - 1000) for n in range(3)])
    assert service.channels is not None
    await until(lambda: len(service.channels.feeds["market"].published) == 3, "market's 3 keys published")
    target = f"127.0.0.1:{service.port}"
    watched = await asyncio.to_thread(ctl, target, "watch", "market", "--snapshot", "--count", "2")
    assert watched.returncode == 0, watched.stderr
    lines = [json.loads(line) for line in watched.stdout.splitlines()]
    assert len(lines) == 2 and all(line["kind"] == "KIND_SNAPSHOT" and line["channel"] == "market" for line in lines)
    unknown = await asyncio.to_thread(ctl, target, "watch", "nope")
    assert unknown.returncode == 4 and "NOT_FOUND CHANNEL_NOT_FOUND" in unknown.stderr, unknown.stderr
    empty = await asyncio.to_thread(ctl, target, "watch", "")
    assert empty.returncode == 3 and "INVALID_FIELD: channel: must not be empty" in empty.stderr, empty.stderr


@pytest.mark.parametrize(("given", "missing"), [("--tls-cert", "--tls-key"), ("--tls-key", "--tls-cert")])
def test_a_client_certificate_without_its_key_or_a_key_without_its_certificate_is_a_usage_error(
        given: str, missing: str, tmp_path: Path) -> None:
    """Mutual TLS takes both. ``--tls-cert`` alone aborted the process inside gRPC core (a C++ check
    failure, exit 134, no word of which argument); ``--tls-key`` alone was dropped without a word and the
    call, its bearer token with it, went in plaintext. Now a bad command line naming both, nothing sent."""
    pem = tmp_path / "client.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    done = subprocess.run([sys.executable, "-m", "atp_client.ctl", "--target", "127.0.0.1:1", "--retries", "0",
                           "--timeout", "1", given, str(pem), "availability", "A@L"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert f"argument {given}:" in done.stderr and missing in done.stderr, done.stderr


def test_tls_credentials_refuse_a_certificate_without_its_key() -> None:
    """``tls_credentials(ca, cert)`` (no key) made credentials that aborted the whole process at the first
    channel built on them (gRPC core's check failure): every program using ``AtpClient``. A ``ValueError``."""
    script = ("from atp_client import tls_credentials\n"
              "for cert, key in ((b'c', None), (None, b'k')):\n"
              "    try:\n        tls_credentials(None, cert, key)\n"
              "    except ValueError as exc:\n        print('refused:', exc)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.count("refused:") == 2, (done.returncode, done.stdout, done.stderr)


def test_every_exit_status_of_atpctl_is_in_its_help_and_in_operations_md() -> None:
    """A script around atpctl tells a file to fix, a service to wait for and a reader gone by the status alone:
    each status atpctl ends with is listed by ``--help`` and in docs/OPERATIONS.md's table of them. The table
    was missing (4, 5, 7 and 8 were said nowhere but ``--help``), and ``--help`` left out 141 (stdout closed)."""
    from atp_client import _output
    statuses = {value for name, value in vars(_output).items() if name.startswith("EXIT_") and isinstance(value, int)}
    text = (Path(__file__).parents[2] / "docs" / "OPERATIONS.md").read_text()
    section = text.partition("\n## atpctl's exit statuses\n")[2].partition("\n## ")[0]
    documented = {int(status) for status in re.findall(r"^\| `(\d+)` \|", section, re.M)}
    assert documented == statuses, (sorted(statuses - documented), sorted(documented - statuses))
    said = {int(n) for n in re.findall(r"(\d+) [a-z]", _output.EXIT_HELP.partition(":")[2])}
    assert said == statuses, (sorted(statuses - said), sorted(said - statuses))


def test_a_stock_load_to_a_service_not_listening_says_nothing_was_sent(tmp_path: Path) -> None:
    """Every call of a load refused its connection (the service down): nothing was sent. It was told as "2 rows
    were not answered (loaded or not)", the operator left to wonder whether the ERP counts had landed. Each call
    waits for its connection first, as ``events import``'s do: the rows are told not sent (not loaded)."""
    extract = tmp_path / "erp.csv"
    extract.write_text("sku,location,on_hand\nA,S1,5\nB,S1,7\n")
    with socket.socket() as closed:  # bound, never listening: a connection to it is refused
        closed.bind(("127.0.0.1", 0))
        done = ctl(f"127.0.0.1:{closed.getsockname()[1]}", "--json", "stock", "load", str(extract),
                   "--as-of", "2026-11-28T06:00:00Z")
    assert done.returncode == 6 and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    assert json.loads(done.stdout) == {"rows": 2, "unreadable": 0, "not_answered": 2, "not_sent": 2}, done.stdout
    assert "0 rows were sent without an answer" in done.stderr and "2 not sent (not loaded)" in done.stderr, \
        done.stderr


def test_a_report_naming_the_extract_itself_is_a_usage_error_and_the_extract_is_kept(tmp_path: Path) -> None:
    """``--report`` naming the file being loaded (a typo, or a link to it): the report is cleared before any row is
    sent, so the ERP extract was deleted, then the load ended in a traceback (exit 1). A bad command line, the
    extract left as it was, nothing sent (no service is needed to say so)."""
    extract = tmp_path / "erp.csv"
    extract.write_text("sku,location,on_hand\nA,S1,5\n")
    (tmp_path / "link.csv").symlink_to(extract)
    for named in (extract, tmp_path / "link.csv"):
        done = ctl("127.0.0.1:1", "--json", "stock", "load", str(extract), "--as-of", "2026-11-28T06:00:00Z",
                   "--report", str(named))
        assert done.returncode == 2 and "argument --report:" in done.stderr, (done.returncode, done.stderr)
        assert extract.read_text() == "sku,location,on_hand\nA,S1,5\n"


async def test_lines_written_to_an_events_file_after_its_check_are_not_sent(
        start_service: ServiceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """An export still writing the file: every line is checked before any is sent, then the file was read again to
    the end. Lines written in between were sent unchecked, and a line torn there (half written) refused the file
    part-way — the calls before it applied, no summary, exit 3, "nothing of it sent". What was checked is sent."""
    from atp_client import _events_commands
    from atp_client._client import AtpClient

    service, client = await start_service()
    now = int(time.time() * 1000)
    facts = tmp_path / "facts.jsonl"
    facts.write_text(receipt(0, now - 1000) + "\n" + receipt(1, now - 1000) + "\n")
    checked = _events_commands.count_facts

    def and_then_written_to(path: Path) -> tuple[int, int]:
        counted = checked(path)
        with path.open("a") as more:  # the export goes on: a whole line, then half of one
            more.write(receipt(2, now - 1000) + "\n" + receipt(3, now - 1000)[:20])
        return counted

    monkeypatch.setattr(_events_commands, "count_facts", and_then_written_to)
    args = argparse.Namespace(batch=1, json=True)
    async with AtpClient(f"127.0.0.1:{service.port}", timeout_s=10) as ctl_client:
        code = await _events_commands.import_facts(args, ctl_client, facts)
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {"FACT_OUTCOME_APPLIED": 2}
    (position,) = await client.availability([("IMP", "DC")])
    assert position.on_hand == 2  # the two lines checked, not the one written after
