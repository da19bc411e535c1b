"""``atp-publisher --channel NAME --adapter webhook|jsonl|shopify``: deliver one channel's feed.

Secrets come from the environment, never from flags (which show in ``ps``) or logs:
``ATP_WEBHOOK_SECRET`` (HMAC key of the webhook adapter), ``ATP_SHOPIFY_TOKEN``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from prometheus_client import start_http_server

from atp_service.storage.nodes import connect_any

from ._adapters import Adapter, JsonlAdapter, ShopifyAdapter, WebhookAdapter
from ._config import PublisherConfig
from ._metrics import PublisherMetrics
from ._publisher import Publisher

log = logging.getLogger("atp-publisher")
EMBEDDED_URL_FILE = Path("var/redis/redis.url")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="atp-publisher", description="Deliver one channel's availability feed")
    p.add_argument("--channel", required=True)
    p.add_argument("--adapter", required=True, choices=("webhook", "jsonl", "shopify"))
    p.add_argument("--url", help="webhook / shopify: where to POST (shopify: the Admin GraphQL endpoint)")
    p.add_argument("--file", type=Path, help="jsonl: the file to append to")
    p.add_argument("--redis-url", default=os.environ.get("ATP_REDIS_URL"),
                   help=f"(env ATP_REDIS_URL; default: the embedded service's, from {EMBEDDED_URL_FILE})")
    p.add_argument("--redis-cluster", action="store_true",
                   default=os.environ.get("ATP_REDIS_CLUSTER", "").lower() in ("1", "true", "yes"),
                   help="--redis-url names a node of a Redis Cluster (env ATP_REDIS_CLUSTER)")
    p.add_argument("--group", default=None, help="consumer group (default: the adapter name)")
    p.add_argument("--consumer", default="publisher-1")
    p.add_argument("--rate", type=float, default=10.0, help="updates/s delivered (default 10)")
    p.add_argument("--burst", type=int, default=0)
    p.add_argument("--batch", type=int, default=100, help="updates per adapter call (default 100)")
    p.add_argument("--max-attempts", type=int, default=8)
    p.add_argument("--backoff-base", type=float, default=0.5)
    p.add_argument("--backoff-max", type=float, default=60.0)
    p.add_argument("--shopify-item-id", default="gid://shopify/InventoryItem/{sku}")
    p.add_argument("--shopify-location-id", default="gid://shopify/Location/{location}")
    p.add_argument("--metrics-port", type=int, default=9465, help="-1 disables")
    p.add_argument("--metrics-host", default=os.environ.get("ATP_METRICS_HOST", "127.0.0.1"),
                   help="interface of the metrics endpoint (env ATP_METRICS_HOST; default 127.0.0.1)")
    p.add_argument("--log-level", default="INFO")
    return p


def make_adapter(args: argparse.Namespace) -> Adapter:
    if args.adapter == "jsonl":
        if args.file is None:
            raise ValueError("--file: required by the jsonl adapter")
        return JsonlAdapter(args.file)
    if not args.url:
        raise ValueError(f"--url: required by the {args.adapter} adapter")
    if args.adapter == "webhook":
        return WebhookAdapter(args.url, os.environ.get("ATP_WEBHOOK_SECRET", "").encode())
    token = os.environ.get("ATP_SHOPIFY_TOKEN", "")
    if not token:
        raise ValueError("ATP_SHOPIFY_TOKEN: required by the shopify adapter")
    return ShopifyAdapter(args.url, token, args.shopify_item_id, args.shopify_location_id)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redis_url = args.redis_url
    if not redis_url and EMBEDDED_URL_FILE.exists():
        redis_url = EMBEDDED_URL_FILE.read_text().strip()
    if not redis_url:
        print("atp-publisher: --redis-url (or ATP_REDIS_URL) is required", file=sys.stderr)
        return 2
    try:
        config = PublisherConfig(
            channel=args.channel, group=args.group or args.adapter, consumer=args.consumer,
            rate_limit_per_s=args.rate, burst=args.burst, delivery_batch=args.batch,
            max_attempts=args.max_attempts, backoff_base_s=args.backoff_base, backoff_max_s=args.backoff_max,
        )
        adapter = make_adapter(args)
    except ValueError as exc:
        print(f"atp-publisher: {exc}", file=sys.stderr)
        return 2
    metrics = PublisherMetrics()
    if args.metrics_port >= 0:
        start_http_server(args.metrics_port, args.metrics_host, registry=metrics.registry)
    asyncio.run(_run(config, redis_url, adapter, metrics, args.redis_cluster))
    return 0


async def _run(config: PublisherConfig, redis_url: str, adapter: Adapter, metrics: PublisherMetrics,
               cluster: bool = False) -> None:
    # Every key a publisher touches shares the channel feeds' hash tag: one slot on a cluster.
    client = connect_any(redis_url, config.block_ms / 1000 + 5, cluster=cluster)
    publisher = Publisher(config, client, adapter, metrics)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, publisher.stop)
    log.info("delivering channel %s from %s via %s (group %s)", config.channel, config.stream, adapter.name,
             config.group)
    try:
        await publisher.run()
    finally:
        await adapter.close()
        await client.aclose()


if __name__ == "__main__":
    sys.exit(main())
