"""Where a channel's updates go. An adapter delivers one ordered batch or raises ``DeliveryError``.

- ``webhook``: HTTP POST of JSON ``{"channel": ..., "updates": [...]}`` signed with HMAC-SHA256:
  header ``X-ATP-Signature: t=<unix seconds>,v1=<hex hmac(secret, "<t>.<body>")>`` (the timestamp
  lets the receiver refuse replays). ``verify_signature`` is the receiver's side.
- ``jsonl``: one JSON object per update appended to a file (fsync per batch).
- ``shopify``: the body of Shopify's GraphQL ``inventorySetQuantities`` mutation (quantity name
  "available", reason "correction"), inventory item and location ids mapped from SKU and location
  by templates such as ``gid://shopify/InventoryItem/{sku}``; sent with ``X-Shopify-Access-Token``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

import httpx

from reservation import ChannelUpdate

SIGNATURE_HEADER = "X-ATP-Signature"


class DeliveryError(Exception):
    """A batch was not delivered. ``retryable`` False: retrying cannot help (dead-letter at once)."""

    def __init__(self, reason: str, retryable: bool = True) -> None:
        super().__init__(reason)
        self.reason, self.retryable = reason, retryable


class Adapter(Protocol):
    name: str

    async def deliver(self, channel: str, updates: list[ChannelUpdate]) -> None: ...

    async def close(self) -> None: ...


def update_json(u: ChannelUpdate) -> dict[str, Any]:
    """The JSON form of an update (webhook and jsonl)."""
    return {
        "channel": u.channel, "sku": u.sku, "location": u.location or None, "quantity": u.quantity,
        "previous": u.previous, "status": u.status.value, "version": u.version,
        "event_time_ms": u.event_time, "published_at_ms": u.published_at,
    }


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(secret: bytes, body: bytes, header: str, now_s: float, tolerance_s: float = 300) -> bool:
    """The receiver's check: right MAC, and a timestamp within ``tolerance_s`` of now."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now_s - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), header)


def _check_status(response: httpx.Response) -> None:
    code = response.status_code
    if 200 <= code < 300:
        return
    reason = f"HTTP {code}: {response.text[:200]}"
    raise DeliveryError(reason, retryable=code in (408, 409, 425, 429) or code >= 500)


class _Http:
    def __init__(self, timeout_s: float) -> None:
        self.client = httpx.AsyncClient(timeout=timeout_s)

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        try:
            return await self.client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        await self.client.aclose()


class WebhookAdapter:
    name = "webhook"

    def __init__(self, url: str, secret: bytes, timeout_s: float = 10.0) -> None:
        if not secret:
            raise ValueError("webhook: a signing secret is required (ATP_WEBHOOK_SECRET)")
        self.url, self._secret, self._http = url, secret, _Http(timeout_s)

    async def deliver(self, channel: str, updates: list[ChannelUpdate]) -> None:
        body = json.dumps({"channel": channel, "updates": [update_json(u) for u in updates]},
                          separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self._secret, body, int(time.time()))}
        _check_status(await self._http.post(self.url, body, headers))

    async def close(self) -> None:
        await self._http.close()


class JsonlAdapter:
    name = "jsonl"

    def __init__(self, path: Path) -> None:
        self.path = path

    async def deliver(self, channel: str, updates: list[ChannelUpdate]) -> None:
        data = "".join(json.dumps(update_json(u), separators=(",", ":")) + "\n" for u in updates).encode()
        try:
            with self.path.open("ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise DeliveryError(f"jsonl: cannot append to {self.path}: {exc.strerror}") from None

    async def close(self) -> None:
        return None


SHOPIFY_MUTATION = (
    "mutation inventorySetQuantities($input: InventorySetQuantitiesInput!) { "
    "inventorySetQuantities(input: $input) { inventoryAdjustmentGroup { reason } "
    "userErrors { field message code } } }"
)


def shopify_body(updates: list[ChannelUpdate], item_id: str, location_id: str,
                 default_location: str) -> dict[str, Any]:
    """Shopify's ``inventorySetQuantities`` request: absolute quantities, one per item and location."""
    quantities = [
        {
            "inventoryItemId": item_id.format(sku=u.sku),
            "locationId": location_id.format(location=u.location or default_location),
            "quantity": u.quantity,
        }
        for u in updates
    ]
    return {
        "query": SHOPIFY_MUTATION,
        "variables": {"input": {"name": "available", "reason": "correction", "ignoreCompareQuantity": True,
                                "quantities": quantities}},
    }


class ShopifyAdapter:
    name = "shopify"

    def __init__(self, url: str, token: str, item_id: str = "gid://shopify/InventoryItem/{sku}",
                 location_id: str = "gid://shopify/Location/{location}", default_location: str = "online",
                 timeout_s: float = 10.0) -> None:
        self.url, self._token, self._http = url, token, _Http(timeout_s)
        self._item, self._location, self._default = item_id, location_id, default_location

    async def deliver(self, channel: str, updates: list[ChannelUpdate]) -> None:
        body = json.dumps(shopify_body(updates, self._item, self._location, self._default)).encode()
        headers = {"Content-Type": "application/json", "X-Shopify-Access-Token": self._token}
        response = await self._http.post(self.url, body, headers)
        _check_status(response)
        try:
            errors = response.json()["data"]["inventorySetQuantities"]["userErrors"]
        except (ValueError, KeyError, TypeError):
            raise DeliveryError("shopify: unexpected response shape", retryable=True) from None
        if errors:
            raise DeliveryError(f"shopify: userErrors {errors}", retryable=False)

    async def close(self) -> None:
        await self._http.close()
