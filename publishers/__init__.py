"""Channel publishers: deliver a channel's curated availability stream to a destination.

Run one process per channel and destination: ``atp-publisher --channel NAME --adapter ...``.
"""

from ._adapters import (
    SIGNATURE_HEADER,
    Adapter,
    DeliveryError,
    JsonlAdapter,
    ShopifyAdapter,
    WebhookAdapter,
    shopify_body,
    sign,
    update_json,
    verify_signature,
)
from ._config import PublisherConfig
from ._metrics import PublisherMetrics
from ._publisher import Publisher

__all__ = [
    "SIGNATURE_HEADER",
    "Adapter",
    "DeliveryError",
    "JsonlAdapter",
    "Publisher",
    "PublisherConfig",
    "PublisherMetrics",
    "ShopifyAdapter",
    "WebhookAdapter",
    "shopify_body",
    "sign",
    "update_json",
    "verify_signature",
]
