"""How a setting's text (an ``ATP_*`` variable, a flag) becomes its value, the closed sets some
settings take their value from, and the checks of the settings that depend on one another."""

from __future__ import annotations

import ipaddress
import math
import re
from pathlib import Path
from typing import Any

from redis.asyncio.connection import parse_url

DURABILITY_MODES = ("everysec", "always")
TRANSPORTS = ("classic", "promise")
"""HTTP/2 transports of gRPC core the server can run on (see atp_service/edge/transport.py)."""
EVENT_LOOPS = ("uvloop", "asyncio")
AUTH_MODES = ("on", "off", "auto")
OWNERSHIP_MODES = ("keyspace", "leases")
LEASED_NO_CHANNELS = "channel feeds are not served with ownership=leases yet"
"""Why a leased process has no channels: said at a start with an estate, and to calls that need them."""
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")

CHOICES: dict[str, tuple[str, ...]] = {
    "durability": DURABILITY_MODES, "http2_transport": TRANSPORTS, "event_loop": EVENT_LOOPS,
    "auth": AUTH_MODES, "ownership": OWNERSHIP_MODES, "log_level": LOG_LEVELS, "log_format": LOG_FORMATS,
}
"""The settings whose value is one of a closed set: checked at start, offered as a flag's choices."""

WILDCARDS = ("", "0.0.0.0", "::", "[::]")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def read_text(type_name: str, raw: str) -> Any:
    """``raw`` as the type named ``type_name`` (a dataclass field's annotation). Tuples are
    comma-separated; an empty text is None where the setting may be unset."""
    try:
        if type_name.startswith("tuple[str"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if type_name.startswith("tuple"):
            return tuple(int(part) for part in raw.split(","))
        if raw == "" and "None" in type_name:
            return None
        if type_name.startswith("bool"):
            return _boolean(raw)
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
        if type_name.startswith("Path"):
            return Path(raw)
    except ValueError:  # a boolean as atpctl and atp-publisher say it, with what reads as one
        said = f"a boolean (one of {', '.join(TRUE + FALSE)})" if type_name.startswith("bool") else type_name
        raise ValueError(f"cannot read {raw!r} as {said}") from None
    return raw


def parse_value(name: str, type_name: str, raw: str) -> Any:
    """``read_text`` of the variable ``ATP_<NAME>``; its error names the variable."""
    try:
        return canonical(name, read_text(type_name, raw))
    except ValueError as exc:
        raise ValueError(f"ATP_{name.upper()}: {exc}") from None


def canonical(name: str, value: Any) -> Any:
    """A closed set's value in its declared spelling, whatever the case it was given in (``info``)."""
    for choice in CHOICES.get(name, ()):
        if isinstance(value, str) and value.lower() == choice.lower():
            return choice
    return value


def _boolean(raw: str) -> bool:
    if raw.lower() not in TRUE + FALSE:
        raise ValueError(raw)
    return raw.lower() in TRUE


def check_choices(cfg: Any) -> None:
    """Each setting of ``CHOICES`` holds one of its values."""
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{name}: must be one of {', '.join(allowed)}, got {getattr(cfg, name)!r}")


POSITIVE = ("mailbox_size", "batch_max", "pipeline_max", "snapshot_every_entries", "publish_batch_max",
            "curate_slice_cells", "ingest_count", "ingest_count_publishing", "ingest_inflight", "max_watchers",
            "max_watch_snapshot_keys", "watch_batch", "max_pending_calls", "max_reserve_streams", "side_stream_maxlen",
            "max_stream_inflight", "max_open_service_streams", "pipeline_depth", "maintenance_interval_ms",
            "redis_timeout_s",
            "snapshot_interval_s", "velocity_half_life_s", "ingest_max_entry_bytes", "owner_check_s",
            "snapshot_write_mb_per_s", "snapshot_retry_max_s", "tracing_export_timeout_s")
"""Settings that bound a queue, a batch or a stream, or pace a loop: at 0 there would be no bound
(``asyncio.Queue(0)``), a side stream trimmed away as written, or a loop that never waits."""
NON_NEGATIVE = ("claim_idle_ms", "max_loop_lag_ms", "max_queue_delay_ms", "ingest_block_ms", "shutdown_grace_s",
                "stream_stall_s", "ingest_max_deliveries", "shutdown_stall_s", "commit_delay_min_rate")
"""Settings where 0 means something (off, at once, no wait), and nothing below it does."""
RANGES = {
    "commit_delay_ms": (0, 100),
    "redis_restarts": (0, 100),
    "snapshot_part_bytes": (4 << 10, 256 << 20),  # Redis takes bulk strings up to 512 MB
    "snapshot_piece_bytes": (4 << 10, 256 << 20),  # a stored key too
    "malloc_mmap_threshold": (0, 32 << 20),  # glibc's largest (HEAP_MAX_SIZE / 2)
    "max_message_bytes": (64 << 10, (1 << 31) - 1),  # gRPC's own limit is an int32
    "stream_window_bytes": (1 << 10, 1 << 30),  # gRPC core's smallest window it announces, and its largest
    "shards": (1, 1024),  # atp_client.MAX_GROUPS: no client routes by a larger table
    "ingest_read_refusals_max": (1, 10_000),  # at waits of 2 s, said within some 5 h at most
    "ingest_refused_kept": (0, 1_000_000),  # each kept some 400 bytes in Redis, beside its input stream
}
"""Settings bounded on both sides: each one's [lowest, highest]."""
PORTS = {"port": 0, "metrics_port": -1}
"""Each port setting's lowest value (0: a free port; -1: the metrics endpoint off)."""


def check_bounds(cfg: Any) -> None:
    """Each setting of ``POSITIVE``, ``NON_NEGATIVE``, ``RANGES`` and ``PORTS`` within its range, refused by name
    otherwise: a port past 65535 would be bound modulo 65536, somewhere no client looks."""
    # Written so that NaN fails them (every comparison with it is false), and infinity too: float() reads
    # "nan" and "inf", and a timer of either ended the start on an error naming no setting, or never fired.
    for name in POSITIVE:
        if not 0 < getattr(cfg, name) < math.inf:  # floats too (redis_timeout_s 0.5)
            raise ValueError(f"{name}: must be positive (and finite), got {getattr(cfg, name)}")
    for name in NON_NEGATIVE:
        if not 0 <= getattr(cfg, name) < math.inf:
            raise ValueError(f"{name}: must be at least 0 (and finite), got {getattr(cfg, name)}")
    for name, (lowest, highest) in RANGES.items():
        if not lowest <= getattr(cfg, name) <= highest:
            raise ValueError(f"{name}: must be within [{lowest}, {highest}], got {getattr(cfg, name)}")
    thresholds = cfg.gc_thresholds  # gc.set_threshold takes up to three; 0 turns collection off, below 0 it runs always
    if len(thresholds) != 3 or not all(n >= 1 for n in thresholds):
        raise ValueError(f"gc_thresholds: must be three positive integers, got {','.join(map(str, thresholds))}")
    for name, lowest in PORTS.items():
        if not lowest <= getattr(cfg, name) <= 65535:
            raise ValueError(f"{name}: must be within [{lowest}, 65535], got {getattr(cfg, name)}")


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def redacted(url: str) -> str:
    """``url`` without the password it may carry (never logged, never printed): all before the
    last ``@`` (a password may hold an ``@``, which redis-py, like ``urllib``, reads as part of it),
    and the value of a ``password=`` query parameter (redis-py takes one there too)."""
    scheme, sep, rest = url.partition("://")
    return scheme + sep + _QUERY_PASSWORD.sub(r"\g<1>***", userinfo_hidden(rest))


def userinfo_hidden(rest: str) -> str:
    """``rest``, a URL after its ``scheme://``, with all before its last ``@`` (user information: a password may
    hold ``/``, ``?``, ``#`` or ``@``) written ``***``."""
    return "***@" + rest.rpartition("@")[2] if "@" in rest else rest


def hash_tag(key: str) -> str:
    """The part of ``key`` Redis Cluster hashes: the first ``{...}`` with something inside, else all."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1:end] if start >= 0 and end > start + 1 else key


def check_key_prefix(prefix: str) -> None:
    """A brace in the prefix would become the hash tag of every key (``storage.keys.Keyspace``), all in one slot."""
    if set("{}") & set(prefix):
        raise ValueError(f"key_prefix: must not contain '{{' or '}}', got {prefix!r}")


def check_redis_url(url: str) -> None:
    """``url`` as redis-py's asyncio client reads it at the first connection (scheme, port, query options): refused
    only there, the service's start ended once its gRPC server was set up and a publisher's in a traceback (exit
    status 1, which a supervisor restarts), neither naming the setting. Its words quote no user information: a
    password holding an unencoded '#', '/' or '?' ends the authority there, its start read as the port, which
    Python's words quote ("Port could not be cast to integer value as 's3c'")."""
    try:
        parse_url(url)
    except ValueError as exc:
        said = str(exc)
        if said.startswith(_PORT_NOT_A_NUMBER):
            said = (f"{_PORT_NOT_A_NUMBER} (not quoted: it may be the start of a password holding '#', '/' or '?', "
                    "which a URL must percent-encode: %23, %2F, %3F)")
        raise ValueError(f"redis_url: {said}") from None


_PORT_NOT_A_NUMBER = "Port could not be cast to integer value"


def check_tls(cfg: Any) -> None:
    """The TLS settings of a ``ServiceConfig``: none given that would go unused."""
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise ValueError("tls_cert/tls_key: give both or neither")
    if cfg.tls_client_ca is not None and cfg.tls_cert is None:
        raise ValueError("tls_client_ca: mutual TLS needs tls_cert and tls_key too")
    if cfg.peer_tls_ca is not None and cfg.tls_cert is None:  # else plaintext between them, no certificate checked
        raise ValueError("peer_tls_ca: TLS between the processes needs tls_cert and tls_key (each serves TLS)")


def check_redis(cfg: Any) -> None:
    """The Redis and ownership settings of a ``ServiceConfig``, checked together."""
    if cfg.redis_cluster and cfg.input_streams:
        streams = (*cfg.input_streams, cfg.dead_letter_stream, cfg.quarantine_stream)
        if len({hash_tag(name) for name in streams}) != 1:
            raise ValueError("input_streams, dead_letter_stream, quarantine_stream: on a Redis Cluster they "
                             "must share one hash tag, e.g. atp:{in}:pos,atp:{in}:wms, atp:{in}:dlq and "
                             f"atp:{{in}}:quarantine (got {', '.join(streams)})")
    for name in ("dead_letter_stream", "quarantine_stream"):
        if getattr(cfg, name) in cfg.input_streams:  # its entries read again, refused again, written again: for ever
            raise ValueError(f"{name}: {getattr(cfg, name)!r} is one of input_streams: what the reader writes there "
                             "it would read again (and trim the facts not read yet), so it must be another stream")
    if cfg.dead_letter_stream == cfg.quarantine_stream:  # dead letters trimmed facts the written set still held (E8)
        raise ValueError(f"dead_letter_stream: {cfg.dead_letter_stream!r} is quarantine_stream too: each write trims "
                         "the stream, dead letters pushing out quarantined facts (never written again), so it must be "
                         "another stream")
    if cfg.redis_url is not None:
        check_redis_url(cfg.redis_url)
    check_key_prefix(cfg.key_prefix)  # at start, not once Redis runs and recovery builds its keys (exit 1)
    _check_reader_names(cfg.consumer_group, cfg.consumer_name, cfg.ownership == "leases")
    _check_side_keys(cfg)
    if cfg.redis_wait_replicas < 0:
        raise ValueError(f"redis_wait_replicas: must be >= 0, got {cfg.redis_wait_replicas}")
    if cfg.redis_wait_timeout_ms <= 0 or (
            cfg.redis_wait_replicas and cfg.redis_wait_timeout_ms >= cfg.redis_timeout_s * 1000):
        raise ValueError(f"redis_wait_timeout_ms: must be positive and, with redis_wait_replicas, under "
                         f"redis_timeout_s, got {cfg.redis_wait_timeout_ms}")
    # Free groups (a stopped or killed process's) are taken only at a balancing pass: a period past
    # the default left them unserved, every call of theirs refused, that long after their lease ran out.
    longest = max(100, cfg.lease_ms // 3)
    if cfg.balance_ms != 0 and not 100 <= cfg.balance_ms <= longest:
        raise ValueError(f"balance_ms: must be 0 (a third of lease_ms) or within [100, {longest}] (a third of "
                         f"lease_ms: a stopped process's groups wait for a pass to be taken), got {cfg.balance_ms}")
    if cfg.advertise_address:
        _check_address(cfg.advertise_address)
    if cfg.ownership == "leases":
        _check_leases(cfg)


READER_NAME_MAX_LEN = 200
"""The longest ``consumer_group`` or ``consumer_name``: each is part of Redis keys (the quarantine run, the unread
count, the made-again mark) and of every reply naming the consumer."""


def _check_reader_names(group: str, consumer: str, leased: bool) -> None:
    """The input streams' consumer group and consumer: named (Redis takes an empty one, and every process's reading
    then shares one nameless consumer), printable, bounded. The group without ``:``: its keys join it and the
    consumer with ``:`` (``quarantine.run_key``: ``…:run:<group>:<consumer>``), and ``a:b`` with consumer ``c``
    took ``a`` with ``b:c``'s run, one reader's start fencing the other's quarantine writes for good (the consumer
    may hold ``:``: leased, it is ``<name>@<host:port>``, and it comes last). Not leased, it does not end with
    ``:answered``: a count's answered mark is ``<its owed hash>:answered`` (``unread.answered_key``), another
    consumer's owed hash then, its SET over that hash."""
    for name, value in (("consumer_group", group), ("consumer_name", consumer)):
        if not 0 < len(value) <= READER_NAME_MAX_LEN or not value.isprintable() or value != value.strip():
            raise ValueError(f"{name}: must be 1 to {READER_NAME_MAX_LEN} printable characters, no space at either "
                             f"end, got {value[:READER_NAME_MAX_LEN]!r}")
    if ":" in group:
        raise ValueError(f"consumer_group: must not contain ':' (its Redis keys join it and the consumer with ':', "
                         f"another group and consumer could name the same key), got {group!r}")
    if not leased and consumer.endswith(":answered"):  # leased, the consumer ends with its address
        raise ValueError(f"consumer_name: must not end with ':answered' (consumer {consumer[:-9]!r}'s answered "
                         f"mark is the Redis key of its count of entries trimmed unread), got {consumer!r}")


MADE_AGAIN, TRIMMED_UNREAD, REFUSED = "made-again", "trimmed-unread", "refused"
DERIVED_KEY_WORDS = (MADE_AGAIN, TRIMMED_UNREAD, REFUSED)
"""What follows ``<input stream>:`` in the keys the reader keeps beside an input stream, named with them
(``unread.made_again_key``, ``unread.trimmed_unread_key``, ``unread.refused_key``); the quarantine stream's own keys
begin ``<quarantine stream>:written`` (``quarantine.written_key``)."""


def _check_side_keys(cfg: Any) -> None:
    """No stream the service reads or writes named as a key it keeps beside another: an input stream's made-again mark
    or unread count, or the quarantine stream's set of what it holds — two types on one key, each write refused
    WRONGTYPE for good (or the mark's SET over a stream)."""
    beside = [f"{s}:{word}:" for s in cfg.input_streams for word in DERIVED_KEY_WORDS]
    beside.append(f"{cfg.quarantine_stream}:written")
    for setting, names in (("input_streams", cfg.input_streams), ("dead_letter_stream", (cfg.dead_letter_stream,)),
                           ("quarantine_stream", (cfg.quarantine_stream,))):
        for name in names:
            if key := next((key for key in beside if name.startswith(key)), None):
                raise ValueError(f"{setting}: {name!r} is a key the service keeps beside another stream ({key}…): "
                                 "it must be another name")


def _check_address(address: str) -> None:
    """Where the others and routing clients dial this process: a host they can reach and a port. Without one gRPC
    dials 443, and every call forwarded or redirected there failed UNAVAILABLE while the start said nothing."""
    host, _, port = address.rpartition(":")
    if _ipv6(address) or _ipv6(host):  # gRPC: two colons or more, no brackets, is a host alone (dialled at 443)
        raise ValueError(f"advertise_address: must be host:port, an IPv6 address in brackets ([fd00::1]:50051): "
                         f"without them gRPC reads it all as a host and dials port 443, got {address!r}")
    if host in WILDCARDS or not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"advertise_address: must be host:port, a host the other processes and clients reach "
                         f"(not a wildcard) and a port within [1, 65535], got {address!r}")


def _ipv6(text: str) -> bool:
    """Whether ``text`` is an IPv6 address as written without brackets (``fd00::1``, ``fe80::1%eth0``)."""
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _check_leases(cfg: Any) -> None:
    if not 300 <= cfg.lease_ms <= 600_000:
        raise ValueError(f"lease_ms: must be within [300, 600000], got {cfg.lease_ms}")
    if not cfg.advertise_address and (cfg.host in WILDCARDS or cfg.port == 0):
        raise ValueError(f"advertise_address: ownership=leases needs the host:port other processes reach this one "
                         f"at (host {cfg.host!r}, port {cfg.port} name none)")
    if cfg.estate is not None or cfg.demo:
        raise ValueError(f"estate: {LEASED_NO_CHANNELS}; start without --estate and with --no-demo")
