"""The configuration and the slices of it the components are given."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest

from atp_client import MAX_GROUPS
from atp_service.config import (
    ChannelSettings,
    EngineSettings,
    IngestSettings,
    ServiceConfig,
    ShardSettings,
    SnapshotPolicy,
)
from atp_service.config_settings import OTHER_TOOLS, as_given, attribute_docs, flat_names, settings_of
from atp_service.config_values import CHOICES, DERIVED_KEY_WORDS, read_text
from atp_service.intake.quarantine import run_key, written_key
from atp_service.intake.unread import answered_key, made_again_key, trimmed_unread_key
from reservation import Limits

SLICES = (ChannelSettings, EngineSettings, IngestSettings, ShardSettings, SnapshotPolicy)
SLICE_PROPERTY = {SnapshotPolicy: "snapshot_policy", ShardSettings: "shard_settings",
                  EngineSettings: "engine_settings", IngestSettings: "ingest_settings",
                  ChannelSettings: "channel_settings"}


def documented_fields() -> set[str]:
    """ServiceConfig fields followed by a docstring (what --help and the docs show)."""
    return {name for name, doc in attribute_docs(ServiceConfig).items() if doc}


def test_every_setting_has_a_docstring() -> None:
    assert {f.name for f in fields(ServiceConfig)} <= documented_fields()
    assert {f.name for f in fields(Limits)} <= {name for name, doc in attribute_docs(Limits).items() if doc}


@pytest.mark.parametrize("kind", SLICES, ids=lambda k: k.__name__)
def test_each_slice_field_is_a_documented_setting_of_the_same_type_or_a_slice(kind: type) -> None:
    config_hints = typing.get_type_hints(ServiceConfig)
    for name, hint in typing.get_type_hints(kind).items():
        if hint in SLICE_PROPERTY:
            assert SLICE_PROPERTY[hint] == name
        else:
            assert name in documented_fields(), f"{kind.__name__}.{name} is not a ServiceConfig setting"
            assert config_hints[name] == hint, f"{kind.__name__}.{name}: {hint} != {config_hints[name]}"


def test_slices_carry_the_values_set() -> None:
    limits = Limits(max_lines=7)
    config = ServiceConfig(shards=3, mailbox_size=11, snapshot_every_entries=5, limits=limits,
                           input_streams=("in",), velocity_half_life_s=9.0)
    engine = config.engine_settings
    assert (engine.shards, engine.limits, engine.shard_settings.mailbox_size) == (3, limits, 11)
    assert engine.shard_settings.snapshot_policy.snapshot_every_entries == 5
    assert config.ingest_settings.input_streams == ("in",) and config.ingest_settings.limits is limits
    assert config.channel_settings.velocity_half_life_s == 9.0


def test_slices_are_frozen_and_slotted() -> None:
    settings = ServiceConfig().shard_settings
    with pytest.raises(AttributeError):
        settings.batch_max = 1  # type: ignore[misc]
    assert not hasattr(settings, "__dict__")


# -- every setting by one name: ATP_<NAME> and --<name> -------------------------------------------

def test_every_field_of_the_configuration_and_of_its_limits_is_a_setting() -> None:
    names = {s.name for s in settings_of(ServiceConfig)}
    assert names == {f.name for f in fields(ServiceConfig) if f.name != "limits"} | {f.name for f in fields(Limits)}
    grace = next(s for s in settings_of(ServiceConfig) if s.name == "fact_grace_ms")
    assert (grace.env, grace.flag, grace.group, grace.default) == ("ATP_FACT_GRACE_MS", "--fact-grace-ms", "limits",
                                                                     Limits().fact_grace_ms)
    assert all(s.doc for s in settings_of(ServiceConfig))


def test_a_limit_named_like_a_setting_is_refused() -> None:
    @dataclass(frozen=True)
    class Bounds:
        shards: int = 1

    @dataclass(frozen=True)
    class Config:
        shards: int = 16
        bounds: Bounds = field(default_factory=Bounds)

    with pytest.raises(TypeError, match=r"named twice .*\['shards'\]"):
        flat_names(Config)
    flat_names(ServiceConfig)  # the real one shares no name


def test_limits_are_read_from_their_variables() -> None:
    config = ServiceConfig.from_env({"ATP_FACT_GRACE_MS": "60000", "ATP_DEFAULT_TTL_SECONDS": "120",
                                     "ATP_MAX_LINES": "7"})
    assert (config.limits.fact_grace_ms, config.limits.default_ttl_seconds, config.limits.max_lines) == (60_000, 120, 7)
    assert config.limits.max_quantity == Limits().max_quantity
    assert config.engine_settings.limits is config.limits  # what the shards are given


def test_a_flag_wins_over_its_variable_which_wins_over_the_default() -> None:
    env = {"ATP_SHARDS": "8", "ATP_PORT": "6000", "ATP_MAX_LINES": "9"}
    config, sources = ServiceConfig.resolve(env, shards=4, max_lines=3)
    assert (config.shards, config.port, config.host, config.limits.max_lines) == (4, 6000, "127.0.0.1", 3)
    assert (sources["shards"], sources["port"], sources["host"], sources["max_lines"]) == (
        "flag --shards", "env ATP_PORT", "default", "flag --max-lines")
    assert ServiceConfig.resolve({}, demo=False)[1]["demo"] == "flag --no-demo"


def test_an_unknown_variable_is_refused_with_the_nearest_setting() -> None:
    with pytest.raises(ValueError, match=r"^ATP_SHARD: not a setting of atp-service; did you mean ATP_SHARDS\?$"):
        ServiceConfig.from_env({"ATP_SHARD": "4"})
    with pytest.raises(ValueError, match=r"ATP_NOTHING_LIKE_IT: not a setting of atp-service \(`atp-service serve"):
        ServiceConfig.from_env({"ATP_NOTHING_LIKE_IT": "1"})
    with pytest.raises(ValueError) as both:
        ServiceConfig.from_env({"ATP_FACT_GRACE": "1", "ATP_LOGLEVEL": "INFO"})
    assert str(both.value).splitlines() == [
        "ATP_FACT_GRACE: not a setting of atp-service; did you mean ATP_FACT_GRACE_MS?",
        "ATP_LOGLEVEL: not a setting of atp-service; did you mean ATP_LOG_LEVEL?"]


def test_the_other_tools_variables_and_foreign_ones_are_not_refused() -> None:
    assert ServiceConfig.from_env({**dict.fromkeys(OTHER_TOOLS, "x"), "PATH": "/bin", "ATPX": "1"}) == ServiceConfig()


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_a_closed_setting_refuses_a_value_outside_its_set(name: str) -> None:
    setting = next(s for s in settings_of(ServiceConfig) if s.name == name)
    assert setting.choices == CHOICES[name] and getattr(ServiceConfig(), name) in setting.choices
    with pytest.raises(ValueError, match=f"^{setting.env}: must be one of {', '.join(CHOICES[name])}, got 'nonsense'"):
        ServiceConfig.from_env({setting.env: "nonsense"})


def test_values_are_read_as_their_field_says() -> None:
    assert read_text("tuple[int, int, int]", "1,2,3") == (1, 2, 3)
    assert read_text("tuple[str, ...]", "a, b,,") == ("a", "b") and read_text("tuple[str, ...]", "") == ()
    assert [read_text("bool", raw) for raw in ("true", "0", "YES", "off")] == [True, False, True, False]
    assert read_text("Path | None", "") is None and read_text("Path | None", "x.toml") == Path("x.toml")
    assert read_text("str | None", "") is None and read_text("str", "") == ""
    with pytest.raises(ValueError, match=r"^ATP_SHARDS: cannot read 'four' as int$"):
        ServiceConfig.from_env({"ATP_SHARDS": "four"})
    with pytest.raises(ValueError, match=r"cannot read 'maybe' as a boolean \(one of 1, true, yes, on"):
        ServiceConfig.from_env({"ATP_DEMO": "maybe"})


def test_a_keyspace_has_no_more_groups_than_a_client_routes_by() -> None:
    """A routing client takes a table of more than ``MAX_GROUPS`` for no keyspace's (and routes by none)."""
    assert ServiceConfig(shards=MAX_GROUPS).shards == MAX_GROUPS
    with pytest.raises(ValueError, match="shards"):
        ServiceConfig(shards=MAX_GROUPS + 1)


@pytest.mark.parametrize(("variable", "value", "named"), [
    ("ATP_FACT_GRACE_MS", "-1", "fact_grace_ms"),  # every fact after the first would be late (E6)
    ("ATP_FACT_FUTURE_SKEW_MS", "-1", "fact_future_skew_ms"),  # every fact stamped now refused (E7)
    ("ATP_RETENTION_MS", "-1", "retention_ms"),
    ("ATP_DEFAULT_TTL_SECONDS", "0", "default_ttl_seconds"),  # every Reserve without a ttl refused
    ("ATP_DEFAULT_TTL_SECONDS", "700000", "default_ttl_seconds"),  # past max_ttl_seconds
    ("ATP_MIN_TTL_SECONDS", "0", "min_ttl_seconds"),
    ("ATP_MAX_TTL_SECONDS", str(10**12), "max_ttl_seconds"),  # an expiry past year 9999: no Timestamp
    ("ATP_MAX_ID_LENGTH", "0", "max_id_length"),  # every request refused
    ("ATP_MAX_LINES", "0", "max_lines"),
    ("ATP_MAX_AVAILABILITY_KEYS", "0", "max_availability_keys"),
    ("ATP_MAX_EVENTS_PER_CALL", "-5", "max_events_per_call"),
    ("ATP_MAX_ROWS_PER_LOAD", "0", "max_rows_per_load"),
    ("ATP_MAX_BATCH_RESERVATIONS", "0", "max_batch_reservations"),
    ("ATP_MAX_LIVE_RESERVATIONS_PER_SHARD", "0", "max_live_reservations_per_shard"),
    ("ATP_MAX_RESOLVED_RESERVATIONS_PER_SHARD", "0", "max_resolved_reservations_per_shard"),
    ("ATP_MAX_OPS_PER_RESERVATION", "-1", "max_ops_per_reservation"),
    ("ATP_MAX_EXPLAIN_HOLDS", "-1", "max_explain_holds"),
    # stream time could pass what a Timestamp holds; past 2**63 ms a fact half-applied (int64 columns)
    ("ATP_FACT_FUTURE_SKEW_MS", str(2**63), "fact_future_skew_ms"),
    ("ATP_FACT_GRACE_MS", str(400 * 365 * 24 * 3600 * 1000), "fact_grace_ms"),
    ("ATP_RETENTION_MS", str(10**17), "retention_ms"),
])
def test_a_limit_out_of_its_range_is_refused_at_start_naming_it(variable: str, value: str, named: str) -> None:
    assert variable == f"ATP_{named.upper()}"
    with pytest.raises(ValueError, match=f"^{variable}: must be"):  # the variable set, not the field
        ServiceConfig.from_env({variable: value})


@pytest.mark.parametrize(("variable", "value", "named"), [
    ("ATP_PORT", "70000", "port"),  # was bound as 70000 mod 65536 = 4464: clients could not find it
    ("ATP_PORT", "-1", "port"),
    ("ATP_METRICS_PORT", "65536", "metrics_port"),
    ("ATP_METRICS_PORT", "-2", "metrics_port"),
    ("ATP_SIDE_STREAM_MAXLEN", "0", "side_stream_maxlen"),  # dead letters trimmed away as written
    ("ATP_MAX_STREAM_INFLIGHT", "0", "max_stream_inflight"),  # asyncio.Queue(0) has no bound at all
    ("ATP_PIPELINE_DEPTH", "0", "pipeline_depth"),
    ("ATP_MAINTENANCE_INTERVAL_MS", "0", "maintenance_interval_ms"),
    ("ATP_REDIS_TIMEOUT_S", "0", "redis_timeout_s"),
    ("ATP_CLAIM_IDLE_MS", "-1", "claim_idle_ms"),
    ("ATP_SNAPSHOT_INTERVAL_S", "0", "snapshot_interval_s"),
    ("ATP_VELOCITY_HALF_LIFE_S", "0", "velocity_half_life_s"),
    ("ATP_MAX_LOOP_LAG_MS", "-1", "max_loop_lag_ms"),
    ("ATP_MAX_QUEUE_DELAY_MS", "-1", "max_queue_delay_ms"),
    ("ATP_INGEST_BLOCK_MS", "-1", "ingest_block_ms"),
    ("ATP_SHUTDOWN_GRACE_S", "-1", "shutdown_grace_s"),
    ("ATP_BALANCE_MS", "-1", "balance_ms"),
    ("ATP_BALANCE_MS", "50", "balance_ms"),
    ("ATP_BALANCE_MS", "2000", "balance_ms"),  # past lease_ms / 3: a killed process's groups unserved that long
    ("ATP_TRACING_SAMPLE_RATIO", "1.5", "tracing_sample_ratio"),
    ("ATP_TRACING_EXPORT_TIMEOUT_S", "0", "tracing_export_timeout_s"),  # every export failed at once
    ("ATP_OWNER_CHECK_S", "0", "owner_check_s"),
    ("ATP_SNAPSHOT_RETRY_MAX_S", "0", "snapshot_retry_max_s"),
    # float() reads these: NaN passed every "<= 0" check, and the start failed later on an unnamed
    # ValueError (a timer of NaN seconds) or ran with it (a stall never noticed, a grace never over)
    ("ATP_REDIS_TIMEOUT_S", "nan", "redis_timeout_s"),
    ("ATP_REDIS_TIMEOUT_S", "inf", "redis_timeout_s"),
    ("ATP_STREAM_STALL_S", "nan", "stream_stall_s"),
    ("ATP_SHUTDOWN_GRACE_S", "inf", "shutdown_grace_s"),
    ("ATP_VELOCITY_HALF_LIFE_S", "-nan", "velocity_half_life_s"),
    ("ATP_SNAPSHOT_WRITE_MB_PER_S", "infinity", "snapshot_write_mb_per_s"),
])
def test_a_setting_out_of_its_range_is_refused_at_start_naming_it(variable: str, value: str, named: str) -> None:
    assert variable == f"ATP_{named.upper()}"
    with pytest.raises(ValueError, match=f"^{variable}: must be"):  # the variable set, not the field
        ServiceConfig.from_env({variable: value})


def test_a_live_bound_raised_past_the_resolved_one_still_starts() -> None:
    """The two bounds count apart (live; resolved, refused included): raising the live one, as a large
    estate may, must not make a configuration that started before refuse to start."""
    assert Limits(max_live_reservations_per_shard=10_000_000).max_live_reservations_per_shard == 10_000_000


@pytest.mark.parametrize(("env", "named"), [
    ({"ATP_TLS_CERT": "server.pem"}, "ATP_TLS_CERT/ATP_TLS_KEY: give both or neither"),
    ({"ATP_TLS_CLIENT_CA": "ca.pem"}, "ATP_TLS_CLIENT_CA: mutual TLS needs ATP_TLS_CERT and ATP_TLS_KEY"),
    # Plaintext between the processes, which the operator took for certificates checked against this CA.
    ({"ATP_PEER_TLS_CA": "ca.pem", "ATP_OWNERSHIP": "leases", "ATP_DEMO": "false"},
     "ATP_PEER_TLS_CA: TLS between the processes needs"),
])
def test_tls_settings_that_would_go_unused_stop_the_start(env: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=f"^{named}"):
        ServiceConfig.from_env(env)


@pytest.mark.parametrize(("env", "named"), [
    ({"ATP_DEAD_LETTER_STREAM": "atp:in:pos"}, "dead_letter_stream"),
    ({"ATP_QUARANTINE_STREAM": "atp:in:wms"}, "quarantine_stream"),
    ({"ATP_INPUT_STREAMS": "pos,dead", "ATP_DEAD_LETTER_STREAM": "dead"}, "dead_letter_stream"),
])
def test_a_side_stream_that_is_an_input_stream_stops_the_start(env: dict[str, str], named: str) -> None:
    """The reader wrote each dead letter (or quarantined fact) onto a stream it reads: read again, refused again,
    written again — one malformed entry was dead-lettered ~1,000 times a second for ever, each write trimming the
    input stream to side_stream_maxlen, its facts not yet read among what went."""
    with pytest.raises(ValueError, match=f"^ATP_{named.upper()}: .* is one of ATP_INPUT_STREAMS"):
        ServiceConfig.from_env(env)


@pytest.mark.parametrize("env", [{"ATP_DEAD_LETTER_STREAM": "atp:quarantine"},
                                 {"ATP_QUARANTINE_STREAM": "atp:side", "ATP_DEAD_LETTER_STREAM": "atp:side"}])
def test_a_dead_letter_stream_that_is_the_quarantine_stream_stops_the_start(env: dict[str, str]) -> None:
    """Both written to one stream, each write trimming it to side_stream_maxlen: dead letters pushed the quarantined
    facts out while the set of those written (trimmed to the same length, counting quarantined facts only) kept
    them, so a fact decided again was taken as in the stream still and never written again (E8: what operators
    reconcile against lost it); operators' tooling read dead letters among the quarantined facts and the other way
    round."""
    with pytest.raises(ValueError, match=r"^ATP_DEAD_LETTER_STREAM: 'atp:(quarantine|side)' is ATP_QUARANTINE_STREAM"):
        ServiceConfig.from_env(env)


@pytest.mark.parametrize("value", ["1,2,3,4", "5000", "5000,10", "-5,10,10", "0,10,1000", "5000,10,0"])
def test_gc_thresholds_other_than_three_positive_numbers_stop_the_start(value: str) -> None:
    """Read as any tuple of integers: four ended the start on a TypeError naming no setting (gc.set_threshold,
    once the embedded Redis had started); one or two left the rest at CPython's own, silently; a first of 0
    turned collection off (grpc.aio's cyclic garbage of each call kept for good), and a negative one collected
    at every allocation."""
    with pytest.raises(ValueError, match=r"^ATP_GC_THRESHOLDS: must be three positive integers"):
        ServiceConfig.from_env({"ATP_GC_THRESHOLDS": value})


@pytest.mark.parametrize("address", ["atp-1.atp-peers.svc", "atp-1:", "atp-1:http", "atp-1:70000", ":50051",
                                     "0.0.0.0:50051", "atp-1:0"])
def test_an_advertised_address_other_processes_cannot_reach_stops_the_start(address: str) -> None:
    """Taken as it was: without a port (a typo of the pod's DNS name) gRPC dials 443, and every call the others
    forwarded, and every client redirected or routed there (GetRouting), failed UNAVAILABLE — the start said nothing."""
    with pytest.raises(ValueError, match=r"^ATP_ADVERTISE_ADDRESS: must be host:port"):
        ServiceConfig.from_env({"ATP_ADVERTISE_ADDRESS": address, "ATP_OWNERSHIP": "leases", "ATP_DEMO": "false"})
    assert ServiceConfig(advertise_address="[::1]:50051").advertised == "[::1]:50051"


@pytest.mark.parametrize("address", ["fd00::1:50051", "fe80::1%eth0:50051", "2001:db8::7", "::1", "fd00::1:8080"])
def test_an_advertised_ipv6_address_without_brackets_stops_the_start(address: str) -> None:
    """gRPC reads a target of two colons or more without brackets as a host alone, and dials it at 443: an IPv6
    pod IP advertised as ``$(POD_IP):50051`` was taken (its last part a port), and every call the others forwarded
    there, and every client routed there, failed UNAVAILABLE, the start saying nothing. Bracketed it is taken."""
    with pytest.raises(ValueError, match=r"^ATP_ADVERTISE_ADDRESS: must be host:port, an IPv6 address in brackets"):
        ServiceConfig.from_env({"ATP_ADVERTISE_ADDRESS": address, "ATP_OWNERSHIP": "leases", "ATP_DEMO": "false"})
    for taken in ("[fd00::1]:50051", "[fe80::1%eth0]:50051", "atp-0.atp-peers.inventory.svc.cluster.local.:50051",
                  "10.0.0.7:50051"):
        assert ServiceConfig.from_env({"ATP_ADVERTISE_ADDRESS": taken, "ATP_OWNERSHIP": "leases",
                                       "ATP_DEMO": "false"}).advertised == taken


@pytest.mark.parametrize("env", [{"ATP_ESTATE": "deploy/estate.toml", "ATP_DEMO": "false"}, {"ATP_DEMO": "true"}])
def test_a_leased_process_given_an_estate_stops_the_start(env: dict[str, str]) -> None:
    """Several processes on one keyspace serve no channel feeds, location groups or safety-stock defaults: each
    would read its own estate file and reload it apart from the others, and a call's answer would depend on the
    process it reached. The start refuses an estate (or the demo's) with leases, naming the setting."""
    leased = {"ATP_OWNERSHIP": "leases", "ATP_ADVERTISE_ADDRESS": "atp-0:50051"}
    with pytest.raises(ValueError, match=r"^ATP_ESTATE: .*not served with ownership=leases.*start without --estate"):
        ServiceConfig.from_env({**leased, **env})
    assert ServiceConfig.from_env({**leased, "ATP_DEMO": "false"}).estate is None


@pytest.mark.parametrize(("env", "named"), [
    ({"ATP_CONSUMER_GROUP": ""}, "consumer_group"),
    ({"ATP_CONSUMER_NAME": ""}, "consumer_name"),
    ({"ATP_CONSUMER_NAME": "atp-1\n"}, "consumer_name"),
    ({"ATP_CONSUMER_GROUP": " atp"}, "consumer_group"),
    ({"ATP_CONSUMER_GROUP": "g" * 201}, "consumer_group"),
])
def test_an_unnamed_or_unprintable_reader_stops_the_start(env: dict[str, str], named: str) -> None:
    """Redis takes an empty consumer group or consumer: every process's reading shared one nameless consumer (a
    restart of one re-reading the others' pending entries), and a name with a newline or without a bound went into
    Redis keys and every line naming the consumer."""
    with pytest.raises(ValueError, match=f"^ATP_{named.upper()}: must be 1 to 200 printable characters"):
        ServiceConfig.from_env(env)


def test_a_consumer_group_with_a_colon_stops_the_start() -> None:
    """The quarantine run key joins the group and the consumer with ':': group 'a:b' with consumer 'c' and group 'a'
    with consumer 'b:c' named one key, and one reader's start fenced the other's quarantine writes for good. The
    consumer may hold ':' (leased, it is '<name>@<host:port>')."""
    assert run_key("atp:quarantine", "a:b", "c") == run_key("atp:quarantine", "a", "b:c")  # what it prevents
    with pytest.raises(ValueError, match=r"^ATP_CONSUMER_GROUP: must not contain ':'"):
        ServiceConfig.from_env({"ATP_CONSUMER_GROUP": "a:b"})
    assert ServiceConfig.from_env({"ATP_CONSUMER_NAME": "atp-1@10.0.0.5:50051"}).consumer_name.endswith(":50051")


@pytest.mark.parametrize(("env", "named"), [
    ({"ATP_DEAD_LETTER_STREAM": "atp:quarantine:written"}, "dead_letter_stream"),
    ({"ATP_INPUT_STREAMS": "atp:in:pos", "ATP_DEAD_LETTER_STREAM": "atp:in:pos:made-again:atp"}, "dead_letter_stream"),
    ({"ATP_INPUT_STREAMS": "atp:in:pos,atp:in:pos:trimmed-unread:atp:atp-1"}, "input_streams"),
    ({"ATP_INPUT_STREAMS": "atp:in:pos", "ATP_QUARANTINE_STREAM": "atp:in:pos:made-again:x"}, "quarantine_stream"),
])
def test_a_stream_named_as_a_key_kept_beside_another_stops_the_start(env: dict[str, str], named: str) -> None:
    """The reader keeps keys beside the streams (an input stream's made-again mark and unread count, the quarantine
    stream's set of what it holds): a stream given such a name put two types on one key, each write refused WRONGTYPE
    for good, or the mark's SET written over the stream. A name merely beginning with another's is fine."""
    with pytest.raises(ValueError, match=f"^ATP_{named.upper()}: .* is a key the service keeps beside another stream"):
        ServiceConfig.from_env(env)
    assert ServiceConfig.from_env({"ATP_INPUT_STREAMS": "atp:in:pos", "ATP_DEAD_LETTER_STREAM": "atp:in:pos:dlq"})
    assert made_again_key("s", "g").startswith(f"s:{DERIVED_KEY_WORDS[0]}:")  # the words are the keys' own
    assert written_key("atp:quarantine").startswith("atp:quarantine:written")


def test_a_refusal_names_the_settings_of_its_text_as_given_but_no_quoted_value() -> None:
    """A name in a refusal's text is the operator's (ATP_X, or the flag given); one inside a quoted value is the
    value's, and an apostrophe (``GetRouting's``) opens no quoted value."""
    said = as_given("max_message_bytes: GetRouting's answer at 'a:1', past max_message_bytes=65536 for lease_ms, "
                    "got 'lease_ms'", ServiceConfig, {"lease_ms": "flag --lease-ms"})
    assert said == ("ATP_MAX_MESSAGE_BYTES: GetRouting's answer at 'a:1', past ATP_MAX_MESSAGE_BYTES=65536 for "
                    "--lease-ms, got 'lease_ms'")


@pytest.mark.parametrize(("message", "said"), [
    ("tls: cannot read /etc/atp/tls/tls_key.pem (No such file or directory)",
     "tls: cannot read /etc/atp/tls/tls_key.pem (No such file or directory)"),
    ("callers_file: cannot read /srv/atp/callers_file (Permission denied)",
     "ATP_CALLERS_FILE: cannot read /srv/atp/callers_file (Permission denied)"),
    ("callers_file: callers_file.toml: not valid TOML", "ATP_CALLERS_FILE: callers_file.toml: not valid TOML"),
    ("redis_url: Redis at unix:///srv/data_dir/redis/redis.sock refused a start-up command",
     "ATP_REDIS_URL: Redis at unix:///srv/data_dir/redis/redis.sock refused a start-up command"),
    ("""dead_letter_stream: "it's quarantine_stream" is quarantine_stream too""",
     """ATP_DEAD_LETTER_STREAM: "it's quarantine_stream" is ATP_QUARANTINE_STREAM too"""),
])
def test_a_refusal_names_no_setting_inside_a_path_or_a_value_quoted_with_its_apostrophe(message: str,
                                                                                         said: str) -> None:
    """A file's name is the operator's as given: ``/etc/atp/tls/tls_key.pem`` was said as
    ``/etc/atp/tls/ATP_TLS_KEY.pem``, a file nobody gave, and a value holding an apostrophe, which ``repr`` quotes in
    double quotes, had the setting's name in it replaced (``"it's ATP_QUARANTINE_STREAM"``)."""
    assert as_given(message, ServiceConfig, {}) == said


@pytest.mark.parametrize("prefix", ["a{b}:", "shop}:", "{"])
def test_a_key_prefix_with_a_brace_stops_the_start_naming_it(prefix: str) -> None:
    """Taken at start, such a prefix failed it once Redis ran, where recovery built its keys: a traceback, exit
    status 1 (not 2, a setting), the field named; atp-publisher, beside it, refused the same variable at once."""
    with pytest.raises(ValueError, match=r"^ATP_KEY_PREFIX: must not contain '\{' or '\}', got "):
        ServiceConfig.from_env({"ATP_KEY_PREFIX": prefix})
    with pytest.raises(ValueError, match=r"^--key-prefix: must not contain"):
        ServiceConfig.from_env({}, key_prefix=prefix)
    assert ServiceConfig.from_env({"ATP_KEY_PREFIX": ""}).key_prefix == ""  # the empty prefix is one


def test_a_consumer_named_as_another_s_answered_mark_stops_the_start() -> None:
    """A read answering a count owed marks the hash ``<owed hash>:answered`` (16587a64): consumer 'atp''s mark is
    consumer 'atp:answered''s owed hash, its SET over that hash (the other's count of entries trimmed unread lost,
    never told: E6) and that reader's every read refused WRONGTYPE for the mark's 10 minutes. Leased, the consumer is
    '<name>@<host:port>' and never ends so: any name there."""
    owed = trimmed_unread_key("atp:in:pos", "atp", "atp:answered")
    assert answered_key(trimmed_unread_key("atp:in:pos", "atp", "atp")) == owed  # what it prevents
    with pytest.raises(ValueError, match=r"^ATP_CONSUMER_NAME: must not end with ':answered'"):
        ServiceConfig.from_env({"ATP_CONSUMER_NAME": "atp:answered"})
    leased = ServiceConfig.from_env({"ATP_CONSUMER_NAME": "atp:answered", "ATP_OWNERSHIP": "leases",
                                     "ATP_DEMO": "false", "ATP_ADVERTISE_ADDRESS": "10.0.0.5:50051"})
    assert leased.consumer_name == "atp:answered"
