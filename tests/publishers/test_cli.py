"""atp-publisher's flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from atp_service.config import ServiceConfig
from publishers import WebhookAdapter
from publishers._startup import RedisWait
from publishers.cli import (
    EXIT_BAD_SETTING,
    EXIT_NO_REDIS,
    build_parser,
    cluster_of,
    main,
    make_adapter,
    make_config,
    metrics_host_of,
)
from tests.publishers.test_publisher import SECRET

FLAGS = ["--channel", "web", "--adapter", "jsonl", "--file", "web.jsonl"]


def test_the_metrics_endpoint_listens_on_loopback_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATP_METRICS_HOST", raising=False)
    assert metrics_host_of(build_parser().parse_args(FLAGS)) == "127.0.0.1"
    monkeypatch.setenv("ATP_METRICS_HOST", "0.0.0.0")  # in a container, for a scraper beside it
    assert metrics_host_of(build_parser().parse_args(FLAGS)) == "0.0.0.0"
    assert metrics_host_of(build_parser().parse_args([*FLAGS, "--metrics-host", "10.0.0.5"])) == "10.0.0.5"


def test_the_request_bounds_reach_the_adapter_and_a_bad_one_is_refused_naming_the_flags(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATP_WEBHOOK_SECRET", SECRET)
    web = ["--channel", "web", "--adapter", "webhook", "--url", "http://127.0.0.1:1/x"]
    adapter = make_adapter(build_parser().parse_args([*web, "--request-timeout", "3", "--max-answer-bytes", "2048"]))
    assert isinstance(adapter, WebhookAdapter)
    assert (adapter._http.settings.timeout_s, adapter._http.settings.max_answer_bytes) == (3.0, 2048)
    with pytest.raises(ValueError, match=r"^--max-answer-bytes: must be positive, got 0$"):
        make_adapter(build_parser().parse_args([*web, "--max-answer-bytes", "0"]))


def test_the_redelivery_bounds_reach_the_config_and_a_bad_one_is_refused_naming_it() -> None:
    args = build_parser().parse_args([*FLAGS, "--redeliver-max-keys", "50", "--redeliver-interval", "5"])
    config = make_config(args)
    assert (config.redeliver_max_keys, config.redeliver_interval_s) == (50, 5.0)
    with pytest.raises(ValueError, match=r"^--redeliver-max-keys: must be at least 1$"):
        make_config(build_parser().parse_args([*FLAGS, "--redeliver-max-keys", "0"]))
    with pytest.raises(ValueError, match=r"^--redeliver-interval: must be positive and finite, got 0.0$"):
        make_config(build_parser().parse_args([*FLAGS, "--redeliver-interval", "0"]))


@pytest.mark.parametrize("url", ["notaurl", "ftp://store.example/hook", "http://", "https:///path-only"])
def test_a_destination_url_that_cannot_be_posted_to_is_refused_at_start_naming_the_flag(
        monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Refused at start, not at each delivery: every update would otherwise be tried and dead-lettered."""
    monkeypatch.setenv("ATP_WEBHOOK_SECRET", SECRET)
    with pytest.raises(ValueError, match=r"^--url: must be an http:// or https:// URL with a host, got "):
        make_adapter(build_parser().parse_args(["--channel", "web", "--adapter", "webhook", "--url", url]))


@pytest.mark.parametrize("url", ["http://127.0.0.1:abc/hook", "http://127.0.0.1:99999/hook",
                                 "https://store.example\x00/hook", "http://[::1/hook"])
def test_a_destination_url_no_request_can_be_sent_to_is_refused_at_start_naming_the_flag(
        monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """A port that is no number or out of range, or a character no request carries, passed the check: the first
    delivery raised httpx.InvalidURL (or the connect's OverflowError in an ExceptionGroup) out of the adapter, which
    is no DeliveryError, and the publisher ended in a traceback, exit 1, at each restart by its unit; an IPv6 host
    left open was refused without naming the flag."""
    monkeypatch.setenv("ATP_WEBHOOK_SECRET", SECRET)
    for adapter in ("webhook", "shopify"):
        with pytest.raises(ValueError, match=r"^--url: not a URL a request can be sent to \(.+\), got "):
            make_adapter(build_parser().parse_args(["--channel", "web", "--adapter", adapter, "--url", url]))


@pytest.mark.parametrize("url", ["http://user:pa55/w0rd@127.0.0.1/hook?token=s3cret",
                                 "http://user:pa55w0rd@127.0.0.1:99999/hook?token=s3cret",
                                 "ftp://user:pa55w0rd@store.example/hook?token=s3cret",
                                 "user:pa55w0rd@store.example/hook?token=s3cret"])
def test_a_destination_url_refused_at_start_says_no_password_nor_query_of_it(
        monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """The refusal, printed at start (the unit's journal), said --url in full: a receiver's password and the token in
    its query, which the line of each request no longer says (_http.RequestLines); a password holding a '/' (read as
    the port 'pa55' and refused) was said also in the parser's own reason."""
    monkeypatch.setenv("ATP_WEBHOOK_SECRET", SECRET)
    for adapter in ("webhook", "shopify"):
        with pytest.raises(ValueError, match=r"^--url: ") as refused:
            make_adapter(build_parser().parse_args(["--channel", "web", "--adapter", adapter, "--url", url]))
        said = str(refused.value)
        assert "***" in said and not any(secret in said for secret in ("pa55", "w0rd", "s3cret")), said


@pytest.mark.parametrize(("flags", "named"), [
    (["--burst", "-5"], "--burst"), (["--rate", "nan"], "--rate"), (["--rate", "inf"], "--rate"),
    (["--backoff-max", "inf"], "--backoff-base/--backoff-max"), (["--backoff-base", "nan"], "--backoff-base"),
    (["--lease", "1"], "--lease: must be finite and at least 3 x --request-timeout = 30 s"),
    (["--batch", "0"], "--batch: must be at least 1"),
])
def test_a_pace_out_of_its_range_is_refused_naming_it(flags: list[str], named: str) -> None:
    """Named by the flag the operator typed, where the field's name was said (rate_limit_per_s for --rate)."""
    with pytest.raises(ValueError, match=f"^{named}"):
        make_config(build_parser().parse_args([*FLAGS, *flags]))


def test_a_metrics_port_out_of_range_is_refused_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*FLAGS, "--redis-url", "redis://127.0.0.1:1", "--metrics-port", "70000"]) == EXIT_BAD_SETTING
    assert "--metrics-port: must be within [-1, 65535], got 70000" in capsys.readouterr().err


def test_a_redis_url_redis_cannot_read_is_refused_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """A traceback and exit status 1 before (a supervisor restarting it for ever), saying no flag."""
    assert main([*FLAGS, "--metrics-port", "-1", "--redis-url", "foo://:s3cret@redis:6379"]) == EXIT_BAD_SETTING
    err = capsys.readouterr().err
    assert err.startswith("atp-publisher: --redis-url: Redis URL must specify one of the following schemes")
    assert "s3cret" not in err


@pytest.mark.parametrize(("flags", "named"), [
    (["--redeliver-interval", "nan"], "--redeliver-interval"),
    (["--redeliver-interval", "inf"], "--redeliver-interval"),
    (["--rate", "1e-310"], "--rate"),
])
def test_a_setting_that_would_stall_or_crash_delivery_is_refused_naming_it(flags: list[str], named: str) -> None:
    """Accepted, these stopped a running publisher without a word: an interval of NaN or infinity never
    came, so after an outage a quiet channel's dead-lettered stock-outs waited for a change that may
    never come (C4); a rate near 1e-306 made the token bucket's wait infinite and the publisher died at
    its second update (OverflowError), as the service's estate refuses below 1e-6."""
    with pytest.raises(ValueError, match=f"^{named}"):
        make_config(build_parser().parse_args([*FLAGS, *flags]))


@pytest.mark.parametrize("wait", ["nan", "inf"])
def test_a_wait_a_destination_may_ask_for_must_be_finite(monkeypatch: pytest.MonkeyPatch, wait: str) -> None:
    """--max-wait NaN or infinity cut nothing: a receiver's Retry-After of a year held the delivery, and
    every stock-out behind it, for as long, the lease renewed and nothing said."""
    monkeypatch.setenv("ATP_WEBHOOK_SECRET", SECRET)
    web = ["--channel", "web", "--adapter", "webhook", "--url", "http://127.0.0.1:1/x"]
    with pytest.raises(ValueError, match=rf"^--max-wait: must be at least 0 and finite, got {wait}$"):
        make_adapter(build_parser().parse_args([*web, "--max-wait", wait]))


@pytest.mark.parametrize(("flag", "value", "said"), [
    ("--request-timeout", "0", "--request-timeout: must be positive and finite, got 0.0"),
    ("--max-answer-bytes", "-1", "--max-answer-bytes: must be positive, got -1"),
    ("--max-wait", "-1", "--max-wait: must be at least 0 and finite, got -1.0"),
    ("--max-waits", "-1", "--max-waits: must be at least 0, got -1"),
])
def test_a_bad_request_bound_is_refused_naming_its_flag_alone(monkeypatch: pytest.MonkeyPatch, flag: str, value: str,
                                                                said: str) -> None:
    """A bad one of the four was refused naming all four flags, then the fields of HttpSettings ("timeout_s and
    max_answer_bytes must be positive, max_wait_s and max_waits at least 0"), none of which the operator typed."""
    monkeypatch.setenv("ATP_WEBHOOK_SECRET", SECRET)
    web = ["--channel", "web", "--adapter", "webhook", "--url", "http://127.0.0.1:1/x"]
    with pytest.raises(ValueError) as refused:
        make_adapter(build_parser().parse_args([*web, flag, value]))
    assert str(refused.value) == said


def test_a_redis_wait_of_nan_is_refused() -> None:
    """NaN never ran out: the publisher waited for Redis for ever instead of exiting 3 for its supervisor."""
    with pytest.raises(ValueError, match=r"^--redis-wait"):
        RedisWait(total_s=float("nan"))


@pytest.mark.parametrize(("raw", "cluster"), [("on", True), ("TRUE", True), ("1", True), ("yes", True),
                                              ("off", False), ("0", False), (None, False)])
def test_atp_redis_cluster_is_read_as_the_service_reads_it(monkeypatch: pytest.MonkeyPatch, raw: str | None,
                                                            cluster: bool) -> None:
    """The publisher took only 1/true/yes: `on`, which the service takes as a cluster, left the publisher
    a single-node client of the cluster the service writes."""
    if raw is None:
        monkeypatch.delenv("ATP_REDIS_CLUSTER", raising=False)
    else:
        monkeypatch.setenv("ATP_REDIS_CLUSTER", raw)
    assert cluster_of(build_parser().parse_args(FLAGS)) is cluster
    assert cluster_of(build_parser().parse_args([*FLAGS, "--redis-cluster"])) is True
    # As the service's flag, the variable's true undone for one run (it had --redis-cluster alone)
    assert cluster_of(build_parser().parse_args([*FLAGS, "--no-redis-cluster"])) is False


def test_an_atp_redis_cluster_that_is_no_boolean_stops_the_start_naming_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`maybe` (or a typo of `true`) was taken as false, without a word, as the service refuses it."""
    monkeypatch.setenv("ATP_REDIS_CLUSTER", "maybe")
    flags = [*FLAGS, "--redis-url", "redis://127.0.0.1:1", "--metrics-port", "-1", "--redis-wait", "0.2"]
    assert main(flags) == EXIT_BAD_SETTING  # before Redis is asked (no Redis there: it waited, then exit 3)
    assert "ATP_REDIS_CLUSTER: cannot read 'maybe' as a boolean" in capsys.readouterr().err


def test_an_empty_atp_key_prefix_is_the_service_s_empty_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """The service takes `ATP_KEY_PREFIX=` as the empty prefix and writes `{avail}:<channel>`; the publisher
    read it as unset, `atp:`, and waited on `atp:{avail}:<channel>`, delivering nothing, without a word."""
    monkeypatch.setenv("ATP_KEY_PREFIX", "")
    config = make_config(build_parser().parse_args(FLAGS))
    assert (config.key_prefix, config.stream) == ("", "{avail}:web")
    monkeypatch.delenv("ATP_KEY_PREFIX")
    assert make_config(build_parser().parse_args(FLAGS)).stream == "atp:{avail}:web"


@pytest.mark.parametrize(("variable", "raw", "said"), [
    ("ATP_REDIS_WAIT_REPLICAS", "", "ATP_REDIS_WAIT_REPLICAS: cannot read '' as int"),
    ("ATP_REDIS_WAIT_REPLICAS", "one", "ATP_REDIS_WAIT_REPLICAS: cannot read 'one' as int"),
    ("ATP_REDIS_WAIT_REPLICAS", "-1", "ATP_REDIS_WAIT_REPLICAS: must be at least 0, got -1"),
    ("ATP_REDIS_WAIT_TIMEOUT_MS", "", "ATP_REDIS_WAIT_TIMEOUT_MS: cannot read '' as int"),
    ("ATP_REDIS_WAIT_TIMEOUT_MS", "0", "ATP_REDIS_WAIT_TIMEOUT_MS: must be at least 1, got 0"),
    ("ATP_LOG_LEVEL", "", "ATP_LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR, got ''"),
    ("ATP_LOG_FORMAT", "", "ATP_LOG_FORMAT: must be one of text, json, got ''"),
    ("ATP_REDIS_CLUSTER", "", "ATP_REDIS_CLUSTER: cannot read '' as a boolean"),
])
def test_a_variable_shared_with_the_service_is_refused_where_the_service_refuses_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, raw: str,
        said: str) -> None:
    """One environment, one meaning: set empty, these were taken as their defaults (0 replicas, a 500 ms wait, INFO,
    text, one Redis) by a publisher beside a service that refuses them; a number that was none was refused naming
    the flag (--wait-replicas) the operator never typed, one out of range naming a field (wait_replicas). Each is
    refused before Redis is asked, naming the variable, as the service refuses it."""
    monkeypatch.setenv(variable, raw)
    with pytest.raises(ValueError, match=f"^{variable}: "):
        ServiceConfig.from_env({variable: raw, "ATP_REDIS_WAIT_REPLICAS": raw if "REPLICAS" in variable else "1"})
    flags = [*FLAGS, "--redis-url", "redis://127.0.0.1:1", "--metrics-port", "-1", "--redis-wait", "0.2"]
    assert main(flags) == EXIT_BAD_SETTING  # before Redis is asked (none there: it waited, then exit 3)
    assert said in capsys.readouterr().err


def test_an_empty_atp_metrics_host_is_refused_naming_it_not_taken_as_loopback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The service refuses to listen on an empty ATP_METRICS_HOST (no address); the publisher beside it read the
    same variable as loopback, without a word. Refused naming what was given; unused (-1), it is not asked."""
    monkeypatch.setenv("ATP_METRICS_HOST", "")
    flags = [*FLAGS, "--redis-url", "redis://127.0.0.1:1", "--redis-wait", "0.2"]
    assert main([*flags, "--metrics-port", "0"]) == EXIT_BAD_SETTING
    assert "atp-publisher: ATP_METRICS_HOST: an empty host is no address to listen on" in capsys.readouterr().err
    assert main([*flags, "--metrics-port", "0", "--metrics-host", ""]) == EXIT_BAD_SETTING
    assert "atp-publisher: --metrics-host: an empty host is no address" in capsys.readouterr().err
    assert metrics_host_of(build_parser().parse_args([*FLAGS, "--metrics-port", "-1"])) == ""


def test_without_a_url_it_reads_the_redis_url_of_the_service_s_data_dir(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The service started with ATP_DATA_DIR writes its embedded Redis's URL under that directory; the publisher, in
    the same environment, looked in var/redis/redis.url whatever ATP_DATA_DIR said: not found (exit 2, a URL
    'required'), or a stale file of another run's found in its place, another Redis's feed delivered."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATP_REDIS_URL", raising=False)
    monkeypatch.setenv("ATP_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "data" / "redis").mkdir(parents=True)
    (tmp_path / "data" / "redis" / "redis.url").write_text("redis://127.0.0.1:1/0\n")  # nothing answers there
    assert main([*FLAGS, "--metrics-port", "-1", "--redis-wait", "0.2"]) == EXIT_NO_REDIS  # it waited for that Redis
    assert "127.0.0.1:1" in capsys.readouterr().err
    monkeypatch.setenv("ATP_DATA_DIR", str(tmp_path / "elsewhere"))
    assert main([*FLAGS, "--metrics-port", "-1", "--redis-wait", "0.2"]) == EXIT_BAD_SETTING
    assert f"{tmp_path}/elsewhere/redis/redis.url where an embedded service" in capsys.readouterr().err


def test_a_redis_url_file_it_cannot_read_stops_the_start_naming_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """$ATP_DATA_DIR/redis/redis.url is the service's, owner-only: one the publisher could not read (another user, a
    directory in its place) ended its start in a traceback, exit status 1, which its unit restarts (not 2, a setting
    that restarting changes nothing of), naming no file. Refused naming the file, exit 2."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATP_REDIS_URL", raising=False)
    monkeypatch.setenv("ATP_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "data" / "redis" / "redis.url").mkdir(parents=True)  # root reads any file: a directory cannot be read
    assert main([*FLAGS, "--metrics-port", "-1", "--redis-wait", "0.2"]) == EXIT_BAD_SETTING
    said = capsys.readouterr().err
    assert f"atp-publisher: {tmp_path}/data/redis/redis.url: cannot read the embedded service's Redis URL" in said, said
