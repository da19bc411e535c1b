"""``atp-publisher --channel NAME --adapter webhook|jsonl|shopify``: deliver one channel's feed.

Secrets come from the environment, never from flags (which show in ``ps``) or logs:
``ATP_WEBHOOK_SECRET`` (the webhook adapter's Standard Webhooks key, ``whsec_...``),
``ATP_SHOPIFY_TOKEN``. Exit status: 0 after a stop signal, 2 for a bad setting (or a refusal of Redis at start
that no wait cures), 3 when Redis did not answer within ``--redis-wait``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from prometheus_client import start_http_server

from atp_service.config_values import (
    FALSE,
    LOG_FORMATS,
    LOG_LEVELS,
    TRUE,
    check_key_prefix,
    check_redis_url,
    parse_value,
    userinfo_hidden,
)
from atp_service.logs import say_left_out, set_up_logging
from atp_service.storage.acl import AclRefused
from atp_service.storage.nodes import Nodes, connect_any

from ._adapters import Adapter, JsonlAdapter, WebhookAdapter
from ._config import PublisherConfig
from ._http import HttpSettings
from ._metrics import PublisherMetrics
from ._permissions import check_publisher_acl
from ._publisher import Publisher
from ._shopify import DEFAULT_API_VERSION, MAX_QUANTITIES, ShopifyAdapter, ShopifySettings
from ._startup import RedisEvicts, RedisRefused, RedisUnavailable, RedisWait, redacted, wait_for_redis

log = logging.getLogger("atp-publisher")
EMBEDDED_URL_FILE = Path("var/redis/redis.url")
"""Where ``make run``'s embedded service writes its Redis's URL: ``embedded_url_file`` with ATP_DATA_DIR unset."""
EXIT_BAD_SETTING = 2
EXIT_NO_REDIS = 3


def embedded_url_file() -> Path:
    """Where the embedded service of this environment writes its Redis's URL: ``<ATP_DATA_DIR>/redis/redis.url``,
    ATP_DATA_DIR read as the service reads it (unset: ``var``, make run's). Always ``var``'s, a service given another
    data directory was not found, or a stale ``var`` of another run's found in its place."""
    return Path(os.environ.get("ATP_DATA_DIR", "var")) / EMBEDDED_URL_FILE.relative_to("var")


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def cluster_of(args: argparse.Namespace) -> bool:
    """``--redis-cluster``, else ``ATP_REDIS_CLUSTER`` read as the service reads it. The publisher took
    only 1/true/yes: ``on``, which the service takes, or a typo left it a single-node client of the
    cluster the service writes, without a word; set empty, which the service refuses, it was taken as false."""
    if args.redis_cluster is not None:
        return bool(args.redis_cluster)
    raw = os.environ.get("ATP_REDIS_CLUSTER")
    if raw is None:
        return False
    if raw.lower() not in (*TRUE, *FALSE):
        raise ValueError(f"ATP_REDIS_CLUSTER: cannot read {raw!r} as a boolean (one of {', '.join(TRUE + FALSE)})")
    return raw.lower() in TRUE


def shared_setting(given: object, flag: str, variable: str, type_name: str, default: object) -> tuple[object, str]:
    """A setting atp-publisher shares with the service, and what names it (the flag or the variable): the flag
    given (not None), else ``variable`` read as the service reads it — set, even empty, it is what was set, refused
    naming it where the service refuses it (an empty number, log level or host), never taken as ``default``."""
    if given is not None:
        return given, flag
    if variable not in os.environ:
        return default, variable
    return parse_value(variable.removeprefix("ATP_").lower(), type_name, os.environ[variable]), variable


def _shared_int(given: int | None, flag: str, variable: str, default: int, least: int) -> int:
    value, named = shared_setting(given, flag, variable, "int", default)
    assert isinstance(value, int)
    if value < least:
        raise ValueError(f"{named}: must be at least {least}, got {value}")
    return value


def logging_of(args: argparse.Namespace) -> tuple[str, str]:
    """(level, format) of the lines written: the flags, else ATP_LOG_LEVEL and ATP_LOG_FORMAT as the service reads
    them (any case; set empty, refused as the service refuses it, where INFO and text were taken)."""
    level, level_named = shared_setting(args.log_level, "--log-level", "ATP_LOG_LEVEL", "str", "INFO")
    form, form_named = shared_setting(args.log_format, "--log-format", "ATP_LOG_FORMAT", "str", "text")
    for value, named, allowed in ((level, level_named, LOG_LEVELS), (form, form_named, LOG_FORMATS)):
        if value not in allowed:
            raise ValueError(f"{named}: must be one of {', '.join(allowed)}, got {value!r}")
    return str(level), str(form)


def metrics_host_of(args: argparse.Namespace) -> str:
    """Where the metrics endpoint listens: ``--metrics-host``, else ATP_METRICS_HOST as set, even empty (the
    service's reading: no address, refused), else loopback. An empty one was taken as loopback, the service
    beside it refusing the same variable."""
    host, named = shared_setting(args.metrics_host, "--metrics-host", "ATP_METRICS_HOST", "str", "127.0.0.1")
    if not host and args.metrics_port >= 0:
        raise ValueError(f"{named}: an empty host is no address to listen on (127.0.0.1: loopback; 0.0.0.0: every "
                         "interface)")
    return str(host)


def _redis_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis-url", default=os.environ.get("ATP_REDIS_URL"),
                   help=f"(env ATP_REDIS_URL; default: the embedded service's, from {EMBEDDED_URL_FILE} or "
                        "$ATP_DATA_DIR/redis/redis.url)")
    p.add_argument("--redis-cluster", action=argparse.BooleanOptionalAction, default=None,  # None: the variable says
                   help="--redis-url names a node of a Redis Cluster (env ATP_REDIS_CLUSTER: true/false, 1/0, "
                        "yes/no, on/off, as the service's; --no-redis-cluster: one Redis, whatever it says)")
    # Set, even empty, it is the service's prefix as the service reads it: an empty one taken as unset (atp:) had
    # the publisher wait on atp:{avail}:<channel> while the service wrote {avail}:<channel>, delivering nothing.
    p.add_argument("--key-prefix", default=None,  # None: ATP_KEY_PREFIX says (make_config)
                   help="the service's key prefix (env ATP_KEY_PREFIX; default atp:)")
    p.add_argument("--wait-replicas", type=int, default=None,  # None: ATP_REDIS_WAIT_REPLICAS says (make_config)
                   help="replicas that must hold what is read before it is delivered: the service's "
                        "ATP_REDIS_WAIT_REPLICAS, set alike (env ATP_REDIS_WAIT_REPLICAS; default 0)")
    p.add_argument("--wait-timeout-ms", type=int, default=None,  # None: ATP_REDIS_WAIT_TIMEOUT_MS says
                   help="how long one such confirmation waits before the read is held back and read again "
                        "(env ATP_REDIS_WAIT_TIMEOUT_MS; default 500)")
    p.add_argument("--redis-wait", type=float, default=300.0,
                   help="seconds to wait for Redis at start before exiting with status 3 (0: forever; default 300)")
    p.add_argument("--redis-backoff-max", type=float, default=5.0,
                   help="longest pause between two tries to reach Redis at start (default 5 s)")


def _delivery_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--group", default=None, help="consumer group (default: the adapter name)")
    p.add_argument("--consumer", default="publisher-1")
    p.add_argument("--rate", type=float, default=10.0, help="updates/s delivered (default 10)")
    p.add_argument("--burst", type=int, default=0)
    p.add_argument("--batch", type=int, default=100, help="updates per adapter call (default 100)")
    p.add_argument("--max-attempts", type=int, default=8)
    p.add_argument("--backoff-base", type=float, default=0.5)
    p.add_argument("--backoff-max", type=float, default=60.0)
    p.add_argument("--redeliver-max-keys", type=int, default=PublisherConfig.redeliver_max_keys,
                   help="keys remembered for redelivery after dead letters; past it the whole state hash is "
                        "resynced (default 100000)")
    p.add_argument("--redeliver-interval", type=float, default=PublisherConfig.redeliver_interval_s,
                   help="while keys are owed their newest value, try a redelivery at least this often (default 30 s)")
    p.add_argument("--max-wait", type=float, default=60.0,
                   help="longest wait a destination may ask for (Retry-After, Shopify throttling; default 60 s)")
    p.add_argument("--max-waits", type=int, default=5,
                   help="such waits per request before it counts as a failed attempt (default 5)")
    p.add_argument("--request-timeout", type=float, default=HttpSettings.timeout_s,
                   help="bound of one request, answer included; jsonl: of one write (default 10 s)")
    p.add_argument("--lease", type=float, default=PublisherConfig.lease_s,
                   help="the group's delivery lease: one publisher of a channel and group delivers, the others wait "
                        "and take over at most this long and one try (1 s at most) after it died (default 30 s; at "
                        "least 3 x --request-timeout)")
    p.add_argument("--max-answer-bytes", type=int, default=HttpSettings.max_answer_bytes,
                   help="largest answer read from a destination (default 1 MiB)")


def _shopify_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shopify-api-version", default=_env("ATP_SHOPIFY_API_VERSION", DEFAULT_API_VERSION),
                   help=f"Admin API version (env ATP_SHOPIFY_API_VERSION; default {DEFAULT_API_VERSION})")
    p.add_argument("--shopify-item-id", default="gid://shopify/InventoryItem/{sku}")
    p.add_argument("--shopify-location-id", default="gid://shopify/Location/{location}")
    p.add_argument("--shopify-cas-rounds", type=int, default=3,
                   help="re-reads of quantities that moved in the store, per batch (default 3)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="atp-publisher", description="Deliver one channel's availability feed")
    p.add_argument("--channel", required=True)
    p.add_argument("--adapter", required=True, choices=("webhook", "jsonl", "shopify"))
    p.add_argument("--url", help="webhook: where to POST; shopify: the store, https://SHOP.myshopify.com")
    p.add_argument("--file", type=Path, help="jsonl: the file to append to")
    _redis_flags(p)
    _delivery_flags(p)
    _shopify_flags(p)
    p.add_argument("--metrics-host", default=None,  # None: ATP_METRICS_HOST says (metrics_host_of)
                   help="(env ATP_METRICS_HOST; default 127.0.0.1; 0.0.0.0 in a container)")
    p.add_argument("--metrics-port", type=int, default=9465, help="-1 disables (default 9465)")
    p.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default=None,  # None: ATP_LOG_LEVEL says
                   help="least severe line written (env ATP_LOG_LEVEL; default INFO)")
    p.add_argument("--log-format", type=str.lower, choices=LOG_FORMATS, default=None,  # None: ATP_LOG_FORMAT says
                   help="text, or json: one object per line (env ATP_LOG_FORMAT; default text)")
    return p


def shown_url(url: str) -> str:
    """``url`` as a refusal of it says it: all before its last ``@`` (user information: a password, which may hold
    ``/``, ``?``, ``#`` or ``@``) and all after its query or fragment begins (a token the receiver checks) as ``***``.
    Printed at start (the unit's journal), the whole URL said what the line of each request leaves out
    (``_http.RequestLines``), where the service writes a Redis URL's password as ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    rest = userinfo_hidden(rest)
    begins = [at for at in (rest.find("?"), rest.find("#")) if at >= 0]
    if begins:
        rest = rest[:min(begins) + 1] + "***"
    return scheme + sep + rest


def _unsendable(url: str) -> str | None:
    """Why no request can be sent to ``url``, None if one can: a port that is no number or out of range, a character
    no request carries. Unrefused, the first delivery raised them out of the adapter (no DeliveryError), ending the
    publisher in a traceback (exit 1, restarted by its unit and ended again at its first delivery)."""
    try:
        _ = urlsplit(url).port
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        return str(exc)
    return None


def make_adapter(args: argparse.Namespace) -> Adapter:
    if args.adapter == "jsonl":
        if args.file is None:
            raise ValueError("--file: required by the jsonl adapter")
        return JsonlAdapter(args.file, args.request_timeout)
    if not args.url:
        raise ValueError(f"--url: required by the {args.adapter} adapter")
    if (why := _unsendable(args.url)) is not None:
        shown = shown_url(args.url)  # the parser's reason may quote a password too (one holding '/' read as the port)
        why = _unsendable(shown) if shown != args.url else why
        raise ValueError(f"--url: not a URL a request can be sent to ({why or 'in what is shown as ***'}), "
                         f"got {shown!r}")
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:  # else every delivery fails, dead-lettered
        raise ValueError(f"--url: must be an http:// or https:// URL with a host, got {shown_url(args.url)!r}")
    try:
        http = HttpSettings(timeout_s=args.request_timeout, max_answer_bytes=args.max_answer_bytes,
                            max_wait_s=args.max_wait, max_waits=args.max_waits)
    except ValueError as exc:  # its words name a field (max_wait_s): the operator typed --max-wait
        raise ValueError(_CONFIG_FIELD.sub(lambda found: FLAG_OF_FIELD[found.group(1)], str(exc))) from None
    if args.adapter == "webhook":
        return WebhookAdapter(args.url, os.environ.get("ATP_WEBHOOK_SECRET", ""), http)
    if args.batch > MAX_QUANTITIES:
        raise ValueError(f"--batch: at most {MAX_QUANTITIES} for shopify (its limit per input array)")
    return ShopifyAdapter(ShopifySettings(
        args.url, os.environ.get("ATP_SHOPIFY_TOKEN", ""), args.shopify_api_version, args.shopify_item_id,
        args.shopify_location_id, cas_rounds=args.shopify_cas_rounds, http=http))


FLAG_OF_FIELD = {"channel": "--channel", "rate_limit_per_s": "--rate", "burst": "--burst", "delivery_batch": "--batch",
                 "max_attempts": "--max-attempts", "backoff_base_s": "--backoff-base", "backoff_max_s": "--backoff-max",
                 "redeliver_max_keys": "--redeliver-max-keys", "redeliver_interval_s": "--redeliver-interval",
                 "lease_s": "--lease", "send_timeout_s": "--request-timeout", "timeout_s": "--request-timeout",
                 "max_answer_bytes": "--max-answer-bytes", "max_wait_s": "--max-wait", "max_waits": "--max-waits"}
"""The flag that gives each field of ``PublisherConfig`` and ``HttpSettings`` a refusal may name."""
_CONFIG_FIELD = re.compile(rf"\b({'|'.join(FLAG_OF_FIELD)})\b(?: \(--[a-z-]+\))?")


def make_config(args: argparse.Namespace) -> PublisherConfig:
    prefix, named = shared_setting(args.key_prefix, "--key-prefix", "ATP_KEY_PREFIX", "str", "atp:")
    try:  # the service's check, naming what was given (the field it names is neither)
        check_key_prefix(str(prefix))
    except ValueError as exc:
        raise ValueError(f"{named}: {str(exc).removeprefix('key_prefix: ')}") from None
    replicas = _shared_int(args.wait_replicas, "--wait-replicas", "ATP_REDIS_WAIT_REPLICAS", 0, least=0)
    wait_ms = _shared_int(args.wait_timeout_ms, "--wait-timeout-ms", "ATP_REDIS_WAIT_TIMEOUT_MS", 500, least=1)
    try:
        return PublisherConfig(
            channel=args.channel, key_prefix=str(prefix), group=args.group or args.adapter, consumer=args.consumer,
            rate_limit_per_s=args.rate, burst=args.burst, delivery_batch=args.batch,
            max_attempts=args.max_attempts, backoff_base_s=args.backoff_base, backoff_max_s=args.backoff_max,
            redeliver_max_keys=args.redeliver_max_keys, redeliver_interval_s=args.redeliver_interval,
            lease_s=args.lease, send_timeout_s=args.request_timeout, wait_replicas=replicas, wait_timeout_ms=wait_ms)
    except ValueError as exc:  # its words name fields (rate_limit_per_s): the operator typed --rate
        raise ValueError(_CONFIG_FIELD.sub(lambda found: FLAG_OF_FIELD[found.group(1)], str(exc))) from None


def checked_redis_url(url: str, named: str) -> None:
    """``url`` read as the client reads it at its first connection, where a refusal was a traceback and exit status 1
    (a supervisor restarting it), naming no flag; refused here as ``named``, the password never quoted."""
    try:
        check_redis_url(url)
    except ValueError as exc:
        raise ValueError(str(exc).replace("redis_url", named, 1)) from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        set_up_logging(*logging_of(args))
    except ValueError as exc:
        print(f"atp-publisher: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTING
    redis_url, url_file = args.redis_url, embedded_url_file()
    if not redis_url and url_file.exists():
        try:  # the service's, owner-only: a traceback and exit 1, which a supervisor restarts, said nothing of it
            redis_url = url_file.read_text().strip()
        except OSError as exc:
            print(f"atp-publisher: {url_file}: cannot read the embedded service's Redis URL ({exc.strerror}); give "
                  "--redis-url or ATP_REDIS_URL", file=sys.stderr)
            return EXIT_BAD_SETTING
    if not redis_url:
        print(f"atp-publisher: --redis-url (or ATP_REDIS_URL, or {url_file} where an embedded service's Redis is) "
              "is required", file=sys.stderr)
        return EXIT_BAD_SETTING
    try:
        checked_redis_url(redis_url, "--redis-url" if args.redis_url else str(url_file))
        config = make_config(args)
        cluster = cluster_of(args)
        wait = RedisWait(total_s=args.redis_wait, max_s=args.redis_backoff_max)
        adapter = make_adapter(args)
        metrics_host = metrics_host_of(args)
    except ValueError as exc:
        print(f"atp-publisher: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTING
    if not -1 <= args.metrics_port <= 65535:
        print(f"atp-publisher: --metrics-port: must be within [-1, 65535], got {args.metrics_port}", file=sys.stderr)
        return EXIT_BAD_SETTING
    metrics = PublisherMetrics()
    if args.metrics_port >= 0:
        try:
            start_http_server(args.metrics_port, metrics_host, registry=metrics.registry)
        except OSError as exc:
            print(f"atp-publisher: metrics: cannot listen on {metrics_host}:{args.metrics_port}: {exc.strerror}",
                  file=sys.stderr)
            return EXIT_BAD_SETTING
    try:
        asyncio.run(_run(config, redis_url, adapter, metrics, cluster, wait))
    except RedisUnavailable as exc:
        print(f"atp-publisher: {exc}", file=sys.stderr)
        return EXIT_NO_REDIS
    except (RedisEvicts, RedisRefused, AclRefused) as exc:
        print(f"atp-publisher: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTING
    return 0


async def _run(config: PublisherConfig, redis_url: str, adapter: Adapter, metrics: PublisherMetrics,
               cluster: bool = False, wait: RedisWait | None = None) -> None:
    # Every key a publisher touches shares the channel feeds' hash tag: one slot on a cluster.
    timeout_s = config.block_ms / 1000 + 5
    client = connect_any(redis_url, timeout_s, cluster=cluster)
    writer = Nodes(client, cluster=cluster, url=redis_url, timeout_s=timeout_s)  # WAIT on the stream's node (C4)
    publisher = Publisher(config, client, adapter, metrics, writer=writer)
    stop = asyncio.Event()

    def on_signal() -> None:
        stop.set()
        publisher.stop()

    async def nap(seconds: float) -> None:  # a stop signal ends the wait for Redis at once
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        async def first_calls() -> None:  # what its user may run, then the group and what was delivered
            await check_publisher_acl(config, redis_url, cluster)
            await publisher.prepare()

        if await wait_for_redis(first_calls, wait or RedisWait(), redacted(redis_url), nap, stop.is_set,
                                cluster=cluster):
            log.info("publisher of channel %s from %s via %s (group %s): delivers while it holds %s", config.channel,
                     config.stream, adapter.name, config.group, config.lease_key)
            await publisher.run()
    finally:  # each step whatever the one before raised: an adapter's close that raised skipped both
        try:
            await adapter.close()
        finally:
            try:
                await writer.aclose()  # its lanes, and ``client``
            finally:
                say_left_out()  # the rate-limited lines left out since their last: no next line says them now


if __name__ == "__main__":
    sys.exit(main())
