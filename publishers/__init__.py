"""Channel publishers: deliver a channel's curated availability stream to a destination.

Run one process per channel and destination: ``atp-publisher --channel NAME --adapter ...``.
"""

from ._adapters import JsonlAdapter, WebhookAdapter, webhook_id, webhook_signer, webhook_signers
from ._config import PublisherConfig
from ._delivery import Adapter, DeliveryError, Refused, update_json
from ._http import HttpSettings
from ._metrics import PublisherMetrics
from ._publisher import Publisher
from ._shopify import DEFAULT_API_VERSION, ShopifyAdapter, ShopifySettings, set_quantities_body
from ._shopify_state import read_body
from ._startup import RedisRefused, RedisUnavailable, RedisWait, wait_for_redis

__all__ = [
    "DEFAULT_API_VERSION",
    "Adapter",
    "DeliveryError",
    "HttpSettings",
    "JsonlAdapter",
    "Publisher",
    "PublisherConfig",
    "PublisherMetrics",
    "RedisRefused",
    "RedisUnavailable",
    "RedisWait",
    "Refused",
    "ShopifyAdapter",
    "ShopifySettings",
    "WebhookAdapter",
    "read_body",
    "set_quantities_body",
    "update_json",
    "wait_for_redis",
    "webhook_id",
    "webhook_signer",
    "webhook_signers",
]
