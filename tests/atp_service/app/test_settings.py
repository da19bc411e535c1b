"""Every setting on the command line: a flag for each, unknown variables refused at start, and
``atp-service config`` showing what the service would run with and why."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from atp_service.app.cli import build_parser, main
from atp_service.app.settings import MIN_RETENTION_MS, given_settings
from atp_service.config import ServiceConfig
from atp_service.config_settings import settings_of
from reservation import Limits


def subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    chooser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = chooser.choices[name]
    return found


def atp_service(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m atp_service ARGS`` with only ``env`` of the ``ATP_*`` variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ATP_")}
    return subprocess.run([sys.executable, "-m", "atp_service", *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(autouse=True)
def no_atp_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process runs read this process's environment: only what a test sets."""
    for name in os.environ:
        if name.startswith("ATP_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("command", ["serve", "config"])
def test_every_setting_has_a_flag_with_its_docstring_variable_and_default(command: str) -> None:
    flags = subcommand(command)._option_string_actions
    for setting in settings_of(ServiceConfig):
        action = flags[setting.flag]
        assert action.dest == setting.name
        assert action.help and f"(env {setting.env}; default " in action.help
        assert setting.doc.split()[1] in action.help  # the field's own words
    assert flags["--no-demo"].dest == "demo" and flags["--no-redis-cluster"].dest == "redis_cluster"
    assert flags["--durability"].choices == ("everysec", "always")
    assert flags["--log-level"].choices == ("DEBUG", "INFO", "WARNING", "ERROR")


def test_flags_are_read_like_their_variables() -> None:
    args = build_parser().parse_args(["serve", "--no-demo", "--gc-thresholds", "1,2,3", "--input-streams", "a,b",
                                      "--fact-grace-ms", "5", "--estate", ""])
    config = ServiceConfig.from_env({}, **{s.name: getattr(args, s.name) for s in settings_of(ServiceConfig)
                                          if hasattr(args, s.name)})
    assert (config.demo, config.gc_thresholds, config.input_streams) == (False, (1, 2, 3), ("a", "b"))
    assert (config.limits.fact_grace_ms, config.estate) == (5, None)


def test_a_flag_that_cannot_be_read_stops_the_start(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["serve", "--shards", "four"], ["serve", "--durability", "sometimes"]):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "argument --shards: cannot read 'four' as int" in err
    assert "argument --durability: invalid choice: 'sometimes'" in err


def test_an_unknown_variable_stops_the_start_naming_the_nearest_setting() -> None:
    done = atp_service("serve", "--no-demo", ATP_SHARD="4", ATP_TOKEN="for atpctl, not a mistake")
    assert done.returncode == 2
    assert done.stderr == "atp-service: ATP_SHARD: not a setting of atp-service; did you mean ATP_SHARDS?\n"
    assert done.stdout == ""  # stopped before anything started


def test_a_value_out_of_range_stops_the_start(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATP_SHARDS", "0")
    assert main(["config"]) == 2
    assert capsys.readouterr().err == "atp-service: ATP_SHARDS: must be within [1, 1024], got 0\n"
    monkeypatch.setenv("ATP_SHARDS", "4")
    monkeypatch.setenv("ATP_MAX_QUANTITY", "1")
    assert main(["config", "--max-on-hand", "0"]) == 2
    assert "limits: need 0 < ATP_MAX_QUANTITY (1) <= --max-on-hand (0)" in capsys.readouterr().err
    monkeypatch.delenv("ATP_MAX_QUANTITY")
    monkeypatch.setenv("ATP_MAX_MESSAGE_BYTES", "0")  # gRPC would read it as no message at all
    assert main(["config"]) == 2
    assert capsys.readouterr().err == "atp-service: ATP_MAX_MESSAGE_BYTES: must be within [65536, 2147483647], got 0\n"


def test_a_refusal_names_each_setting_as_the_operator_gave_it(capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks name fields (``shards``), which the operator never typed: ATP_SHARDS=0 was refused as
    'shards: must be within [1, 1024]'. Each setting a refusal names is named as given: the flag where one was,
    else its variable (where the operator would set one left at its default)."""
    assert main(["config", "--shards", "2000"]) == 2
    assert capsys.readouterr().err == "atp-service: --shards: must be within [1, 1024], got 2000\n"
    monkeypatch.setenv("ATP_REDIS_WAIT_REPLICAS", "1")
    assert main(["config", "--redis-timeout-s", "0.4"]) == 2
    assert capsys.readouterr().err == ("atp-service: ATP_REDIS_WAIT_TIMEOUT_MS: must be positive and, with "
                                       "ATP_REDIS_WAIT_REPLICAS, under --redis-timeout-s, got 500\n")
    monkeypatch.delenv("ATP_REDIS_WAIT_REPLICAS")
    monkeypatch.setenv("ATP_MAX_LINES", "0")  # a bound of reservation.Limits, no "limits: " before it
    assert main(["config"]) == 2
    assert capsys.readouterr().err == "atp-service: ATP_MAX_LINES: must be at least 1, got 0\n"
    monkeypatch.delenv("ATP_MAX_LINES")
    monkeypatch.setenv("ATP_CONSUMER_GROUP", "a:max_lines")  # a value is quoted as it was given
    assert main(["config", "--no-demo"]) == 2
    assert capsys.readouterr().err.startswith("atp-service: ATP_CONSUMER_GROUP: must not contain ':' (its Redis")


@pytest.mark.parametrize(("url", "said"), [
    ("foo://:s3cret@redis:6379", "must specify one of the following schemes (redis://, rediss://, unix://)"),
    ("redis://:s3cret@redis:63x9", "Port could not be cast to integer value (not quoted"),
    ("redis://:s3cret@redis:70000", "Port out of range 0-65535"),
])
def test_a_redis_url_redis_cannot_read_stops_the_start_naming_it(url: str, said: str,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused by ``atp-service config`` too, naming the setting as given and never its password: it was read only
    once the service had set up its gRPC server, refused as 'Redis URL must specify ...' with no setting named."""
    monkeypatch.setenv("ATP_REDIS_URL", url)
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("atp-service: ATP_REDIS_URL: ") and said in err and "s3cret" not in err
    assert main(["config", "--redis-url", url]) == 2
    assert capsys.readouterr().err.startswith("atp-service: --redis-url: ")


@pytest.mark.parametrize("url", ["redis://:s3c#ret@redis:6379", "redis://:s3c/ret@redis:6379",
                                 "redis://:s3c?ret@redis:6379", "redis://u:s3c#ret@redis"])
def test_a_password_holding_a_url_delimiter_is_never_quoted_in_the_refusal(url: str,
                                                                           capsys: pytest.CaptureFixture[str],
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A password with an unencoded '#', '/' or '?' ends the URL's authority there: what precedes it is read as the
    port, and redis-py's words ("Port could not be cast to integer value as 's3c'") quoted the password's start."""
    monkeypatch.setenv("ATP_REDIS_URL", url)
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("atp-service: ATP_REDIS_URL: Port could not be cast to integer value"), err
    assert "s3c" not in err and "%23" in err, err


def test_a_boolean_that_cannot_be_read_is_refused_saying_what_reads(capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """'ATP_REDIS_CLUSTER: cannot read 'maybe' as bool' named Python's type, not what the service takes, where
    atpctl and atp-publisher, reading the same variable, said it (``env_boolean``, ``cluster_of``)."""
    monkeypatch.setenv("ATP_REDIS_CLUSTER", "maybe")
    assert main(["config"]) == 2
    assert capsys.readouterr().err == ("atp-service: ATP_REDIS_CLUSTER: cannot read 'maybe' as a boolean (one of 1, "
                                       "true, yes, on, 0, false, no, off)\n")
    monkeypatch.setenv("ATP_REDIS_CLUSTER", "on")
    monkeypatch.setenv("ATP_SHARDS", "four")  # other types as their names say
    assert main(["config"]) == 2
    assert capsys.readouterr().err == "atp-service: ATP_SHARDS: cannot read 'four' as int\n"


def test_ids_longer_than_a_message_can_answer_stop_the_start(capsys: pytest.CaptureFixture[str]) -> None:
    """A Reserve of one line of ids of ``max_id_length`` could not be answered within
    ``max_message_bytes``: refused at start naming both, not at every such Reserve (or never, the
    answer past gRPC's limit: OUTCOME_UNKNOWN for a change made)."""
    assert main(["config", "--max-id-length", "20000", "--max-message-bytes", "65536"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("atp-service: --max-id-length: 20000") and "(--max-message-bytes=65536)" in err, err
    assert main(["config", "--max-id-length", "20000"]) == 0  # 4 MiB by default


def test_a_retention_below_its_floor_stops_the_start() -> None:
    """``retention_ms`` had no floor (the engine's ``Limits`` take 0, and tests shorter ones): a service started with a
    retention its hosts' clock gap outlasts told one order's parts from another's by their age wrongly (R3). The real
    entry point refuses it before anything starts (exit 2, never restarted), naming the setting as given, its floor
    and why; at the floor it starts."""
    below = str(MIN_RETENTION_MS - 1)
    refused = atp_service("serve", "--no-demo", "--auth", "off", "--port", "0", "--metrics-port", "-1",
                          "--redis-url", "redis://127.0.0.1:1", ATP_RETENTION_MS=below)  # no Redis of its own
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith(f"atp-service: ATP_RETENTION_MS: must be at least {MIN_RETENTION_MS} (10 "
                                     f"minutes), got {below}: a sixteenth of it is how far from the true time a "
                                     "host's clock may stray"), refused.stderr
    assert "Traceback" not in refused.stderr
    flagged = atp_service("config", "--retention-ms", "0")
    assert flagged.returncode == 2 and flagged.stderr.startswith(
        f"atp-service: --retention-ms: must be at least {MIN_RETENTION_MS}"), flagged.stderr
    assert main(["config", "--retention-ms", str(MIN_RETENTION_MS)]) == 0


def test_config_prints_every_setting_with_its_value_and_source(capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATP_SHARDS", "8")
    monkeypatch.setenv("ATP_FACT_GRACE_MS", "60000")
    assert main(["config", "--shards", "4", "--no-demo", "--redis-url", "redis://:s3cret@redis:6379/0"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    assert set(rows) == {s.name for s in settings_of(ServiceConfig)}
    assert rows["shards"] == ["4", "flag", "--shards"]
    assert rows["fact_grace_ms"] == ["60000", "env", "ATP_FACT_GRACE_MS"]
    assert rows["demo"] == ["false", "flag", "--no-demo"]
    assert rows["port"] == ["50051", "default"] and rows["estate"] == ["unset", "default"]
    assert rows["redis_url"] == ["redis://***@redis:6379/0", "flag", "--redis-url"]
    assert "s3cret" not in out


@pytest.mark.parametrize(("url", "shown"), [
    # redis-py reads the password up to the last "@" (as urllib does): nothing of it is shown
    ("redis://:p@ss@redis:6379/0", "redis://***@redis:6379/0"),
    ("redis://atp:a@b@c@redis:6379/0", "redis://***@redis:6379/0"),
    # and takes one from the query too
    ("rediss://redis:6380/0?password=s3cret&ssl_ca_certs=/ca.pem", "rediss://redis:6380/0?password=***&ssl_ca_certs=/ca.pem"),
    ("redis://redis:6379/0", "redis://redis:6379/0"),
])
def test_config_never_prints_any_part_of_a_redis_password(url: str, shown: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--redis-url", url]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert rows["redis_url"][0] == shown


def test_config_as_json_for_machines() -> None:
    done = atp_service("config", "--format", "json", "--log-format", "json", ATP_MAX_LINES="7",
                       ATP_INPUT_STREAMS="a,b")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert len(got) == len(settings_of(ServiceConfig))
    assert got["max_lines"] == {"value": 7, "source": "env ATP_MAX_LINES"}
    assert got["input_streams"] == {"value": ["a", "b"], "source": "env ATP_INPUT_STREAMS"}
    assert got["log_format"] == {"value": "json", "source": "flag --log-format"}
    assert got["max_quantity"] == {"value": Limits().max_quantity, "source": "default"}
    assert got["data_dir"] == {"value": "var", "source": "default"} and got["redis_url"]["value"] is None


def test_a_flag_given_empty_wins_over_its_variable(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A flag wins over its variable, one that unsets a setting too: `--estate ""` (no estate) or `--tls-client-ca ""`
    (no mutual TLS) was read as no flag at all, and the variable's file stood, the source said "env"."""
    monkeypatch.setenv("ATP_ESTATE", "/etc/atp/estate.toml")
    monkeypatch.setenv("ATP_REDIS_URL", "redis://redis:6379/0")
    assert main(["config", "--format", "json", "--estate", "", "--redis-url", ""]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["estate"] == {"value": None, "source": "flag --estate"}
    assert got["redis_url"] == {"value": None, "source": "flag --redis-url"}  # the embedded Redis, as told


def test_a_closed_set_is_read_in_any_case() -> None:
    assert ServiceConfig.from_env({"ATP_LOG_LEVEL": "warning", "ATP_DURABILITY": "Always"}).log_level == "WARNING"
    args = build_parser().parse_args(["serve", "--log-level", "debug", "--log-format", "JSON"])
    assert given_settings(args) == {"log_level": "DEBUG", "log_format": "json"}


def test_config_into_a_reader_that_went_away_exits_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    """``atp-service config | head``: the pipe closes early, which is no error of the service."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    stdout = os.dup(1)
    os.dup2(write_end, 1)
    try:
        monkeypatch.setattr(sys, "stdout", open(1, "w", buffering=1, closefd=False))  # noqa: SIM115
        assert main(["config"]) == 0
    finally:
        os.dup2(stdout, 1)
        os.close(stdout)
        os.close(write_end)
