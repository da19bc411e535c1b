"""``shopify``: available quantities set through Shopify's Admin GraphQL ``inventorySetQuantities``.

Each batch is one mutation (``name: "available"``, ``reason: "correction"``) at an explicit API
version, with ``@idempotent(key:)`` and a ``changeFromQuantity`` per quantity (compare-and-set,
required from API version 2026-04):

- **Idempotency key**: derived from the request (endpoint, channel, versions, input): every try of
  the same request carries the same key, so Shopify applies it once however often a lost answer
  makes us send it; a different request (another quantity, another expectation) never shares one. A key spent
  (``IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED``, a stale compare) is salted anew for the request's next tries (``KeySalts``).
- **changeFromQuantity**: what the store holds as far as this process knows: the quantity it last
  set or read there, else the update's ``previous`` (what the channel was told before); unknown
  (a baseline) is read from the store first. A ``CHANGE_FROM_QUANTITY_STALE`` answer means the
  store's quantity moved (an order placed in Shopify, an edit by hand): the moved quantities are
  read and the set is sent again with them, at most ``cas_rounds`` times per batch; those still stale then
  are read first at the batch's retry (``ReadFirst``). The curated
  number wins: the service is the source of truth for ``available`` at the mapped locations.
  A quantity the store was read to hold already is not sent; one whose target equals what this process
  knows (or ``previous``) is read first: that memory is no proof (a set whose answer was lost may have been
  applied, another publisher of the group may have set the item since), and a stock-out taken for set on its
  word was never sent (C2, C4).
- **Refused quantities**: a quantity the store cannot take (no inventory level of the item at the
  location when read; a user error whose ``field`` names that quantity: an unknown item or
  location, an item not stocked there) is refused alone (``Refused``, dead-lettered by the
  publisher with the reason) and the rest is set: a set that refuses some is sent once more
  without them (another input, so another key). More refused after that: the batch fails (retried).
- **Refused as a whole**: a set or read Shopify refuses before it runs (a top-level error: an id it
  cannot parse, the query's cost) or with a user error naming no single quantity may be refused for
  one update: the batch is delivered again in halves, in order (the stock-outs lead), down to single
  updates (``in_halves``, at most 2n - 1 parts, each with its reads and re-reads as above); only an
  update refused alone is dead-lettered. Not split: what any part would get the same (access denied,
  an inactive shop, an error about the request's other input fields or its idempotency key), nor
  what is retried (throttling, Shopify's internal errors).
- **Cost**: Shopify limits by query cost (a leaky bucket reported in ``extensions.cost``). Before a
  request the adapter waits until the bucket, as last reported and refilled at ``restoreRate``,
  holds what that kind of request last cost; a ``THROTTLED`` answer waits
  ``(requestedQueryCost - currentlyAvailable) / restoreRate`` and sends again (both bounded by
  ``HttpSettings``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from atp_service.logs import EveryInterval
from reservation import ChannelUpdate

from ._delivery import SPLIT_LOG_EVERY_S, DeliveryError, Refused, in_halves
from ._http import Http, HttpSettings, Sleep, check_status
from ._shopify_state import (
    CONCURRENT,
    PREVIOUS_ATTEMPT_FAILED,
    STALE,
    CostBucket,
    KeySalts,
    KnownQuantities,
    ReadFirst,
    Row,
    about_the_request,
    available_of,
    error_code,
    graphql_errors,
    read_body,
    row_errors,
    set_ran,
    stale_rows,
    user_errors_text,
)

log = logging.getLogger(__name__)

DEFAULT_API_VERSION = "2026-10"
"""Shopify's stable Admin API version of October 2026 (each is supported for at least 12 months)."""
OLDEST_API_VERSION = "2026-01"
"""``changeFromQuantity`` and ``@idempotent`` on inventory mutations exist from this version on."""
MAX_QUANTITIES = 250
"""Shopify refuses an input array of more than 250 items: the most updates per batch."""
SPENT_KEYS_REMEMBERED = 10_000
"""Requests whose new key (``KeySalts``) is remembered: each one a batch whose key Shopify spent, rare."""
MOVED_REMEMBERED = 10_000
"""Quantities remembered to be read before their next set (``ReadFirst``): each one given up on a stale compare."""
READ_CHUNK = 50
"""Quantities read per query (keeps one read's cost well under Shopify's per-query maximum)."""
_VERSION = re.compile(r"^\d{4}-(01|04|07|10)$")
RETRYABLE_ERRORS = frozenset({"INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE", "TIMEOUT"})
SAME_FOR_EVERY_PART = frozenset({"ACCESS_DENIED", "SHOP_INACTIVE"})
"""Top-level error codes about the app's access or the shop, not the batch: a part would get the same."""

SET_MUTATION = (
    "mutation AtpSetAvailable($input: InventorySetQuantitiesInput!, $idempotencyKey: String!) { "
    "inventorySetQuantities(input: $input) @idempotent(key: $idempotencyKey) { "
    "inventoryAdjustmentGroup { id } userErrors { field message code } } }"
)


@dataclass(frozen=True)
class ShopifySettings:
    store_url: str
    """The store's address, ``https://SHOP.myshopify.com`` (the API path is built from ``api_version``)."""

    token: str = field(repr=False)
    """Admin API access token (``X-Shopify-Access-Token``)."""

    api_version: str = DEFAULT_API_VERSION
    item_id: str = "gid://shopify/InventoryItem/{sku}"
    location_id: str = "gid://shopify/Location/{location}"
    default_location: str = "online"
    """The ``{location}`` of a network offer (an update without a location)."""

    cas_rounds: int = 3
    """Re-reads of quantities that moved in the store, per batch, before the batch fails (retried later)."""

    known_max: int = 100_000
    """Store quantities remembered (the oldest forgotten first); a forgotten one costs a read."""

    http: HttpSettings = field(default_factory=HttpSettings)

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("ATP_SHOPIFY_TOKEN: required by the shopify adapter")
        if not all("!" <= c <= "~" for c in self.token):
            # Sent, a newline or space (left from the file it was read from) or a control character was refused by
            # HTTP itself, the reason naming the header's value: the token in every dead letter and its log line,
            # retried for ever; a non-ASCII one raised UnicodeEncodeError out of the adapter, ending the publisher.
            raise ValueError("ATP_SHOPIFY_TOKEN: holds whitespace (a newline left from the file it was read from?), "
                             "a control or a non-ASCII character, which no request header carries")
        if "/admin/api/" in self.store_url:
            raise ValueError("--url: the store's address (https://SHOP.myshopify.com); the API version comes "
                             "from --shopify-api-version")
        if self.api_version != "unstable" and (not _VERSION.match(self.api_version)
                                               or self.api_version < OLDEST_API_VERSION):
            raise ValueError(f"--shopify-api-version: YYYY-01/04/07/10, {OLDEST_API_VERSION} or newer "
                             f"(changeFromQuantity and @idempotent), got {self.api_version!r}")
        if self.cas_rounds < 0 or self.known_max < 0:
            raise ValueError("cas_rounds and known_max: at least 0")

    @property
    def endpoint(self) -> str:
        return f"{self.store_url.rstrip('/')}/admin/api/{self.api_version}/graphql.json"


@dataclass(slots=True)
class _Rounds:
    """How far one batch has gone: its re-reads of moved quantities, whether refused quantities were dropped
    already, its keys renewed at once (``IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED``)."""

    rereads: int = 0
    dropped: bool = False
    renewed: int = 0


def set_quantities_body(endpoint: str, channel: str, updates: list[ChannelUpdate], rows: list[Row],
                        salt: int = 0) -> dict[str, Any]:
    """The ``inventorySetQuantities`` request of ``rows``, with its idempotency key (see the module)."""
    data = {
        "name": "available", "reason": "correction",
        "quantities": [{"inventoryItemId": r.item, "locationId": r.location, "quantity": r.quantity,
                        "changeFromQuantity": r.expected} for r in rows],
    }
    identity = {"endpoint": endpoint, "channel": channel, "versions": [u.version for u in updates],
                "input": data, "salt": salt}
    key = uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(identity, sort_keys=True, separators=(",", ":")))
    return {"query": SET_MUTATION, "variables": {"input": data, "idempotencyKey": str(key)}}


class ShopifyAdapter:
    name = "shopify"

    def __init__(self, settings: ShopifySettings, sleep: Sleep = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._http = Http(settings.http, sleep)
        self._clock = clock
        self._bucket = CostBucket()
        self._cost: dict[str, float] = {}  # per request kind: the cost it last asked for
        self.known = KnownQuantities(settings.known_max)
        self.salts = KeySalts(SPENT_KEYS_REMEMBERED)
        self.read_first = ReadFirst(MOVED_REMEMBERED)
        self._split_lines = EveryInterval(SPLIT_LOG_EVERY_S, clock)
        self._refused_lines = EveryInterval(SPLIT_LOG_EVERY_S, clock)  # ``publisher_quantities_refused``
        self._ran_lines = EveryInterval(SPLIT_LOG_EVERY_S, clock)  # sets that ran, answered with errors (``set_ran``)

    async def deliver(self, channel: str, updates: list[ChannelUpdate]) -> list[Refused]:
        """The batch set; one Shopify refuses as a whole for what may be one of its quantities (a
        top-level error other than access, throttling or its own failure; a user error naming no
        single quantity) is set again in halves down to single updates (``in_halves``): only those
        refused alone are dead-lettered, the stock-outs that lead the batch are set (C2, C4)."""
        return await in_halves(channel, updates, lambda part: self._deliver_once(channel, part), self._refused_alone,
                               self._split_lines)

    async def _deliver_once(self, channel: str, updates: list[ChannelUpdate]) -> list[Refused]:
        rows = [self._row(u) for u in updates]
        await self._read([r for r in rows if r.expected is None])
        rounds = _Rounds()
        # Each pass either ends, or drops refused rows (once), or re-reads (at most cas_rounds), or raises.
        while todo := [r for r in rows if r.refused is None and r.expected != r.quantity]:
            request, errors = await self._set(channel, updates, todo)
            if not errors:
                break
            await self._resolve(errors, todo, rounds, request)
        for r in rows:
            if r.refused is None:
                self.known.put(r.key, r.quantity)
        return [Refused(r.update, r.refused) for r in rows if r.refused is not None]

    def _ids(self, u: ChannelUpdate) -> tuple[str, str]:
        s = self.settings
        return s.item_id.format(sku=u.sku), s.location_id.format(location=u.location or s.default_location)

    def _row(self, u: ChannelUpdate) -> Row:
        """The quantity to set, expecting what the store holds as far as this process knows. C2, C4: a target equal to
        that is read first, not taken for set on its word: a set whose answer was lost may have been applied, and
        another publisher of the group may have set the item since (a stock-out after them was never sent)."""
        item, location = self._ids(u)
        if (item, location) in self.read_first:  # moved past the expectation a try was given up with (``ReadFirst``)
            return Row(item, location, u.quantity, None, u)
        known = self.known.get((item, location))
        expected = known if known is not None else u.previous
        return Row(item, location, u.quantity, None if expected == u.quantity else expected, u)

    def _refuse(self, r: Row, why: str) -> None:
        r.refused = self._reason(r.update, why)

    def _refused_alone(self, u: ChannelUpdate, reason: str) -> Refused:
        """An update the store refused in a request of its own (after halves): its reason names its row."""
        return Refused(u, self._reason(u, reason.removeprefix("shopify: ")))

    def _reason(self, u: ChannelUpdate, why: str) -> str:
        item, location = self._ids(u)
        return f"shopify: sku {u.sku} at {u.location or self.settings.default_location} ({item} at {location}): {why}"

    async def _resolve(self, errors: list[dict[str, Any]], todo: list[Row], rounds: _Rounds, request: str) -> None:
        """Act on the user errors of a set (``request``: its key unsalted): drop the quantities the store refuses (once
        per batch), send again with a new key where the last one failed, re-read what moved (at most ``cas_rounds``
        times), or give up."""
        codes = {e.get("code") for e in errors}
        if CONCURRENT in codes:
            # Not run this time: the try in progress decides, whatever else the reply says (a refused quantity, a
            # stale compare), and the same key is answered with its outcome. Read as a refusal of the request, the
            # batch was dead-lettered for good, its stock-outs with it, and a try applied later told as failed (C2, C4).
            raise DeliveryError(f"shopify: the request is still in progress at Shopify: {user_errors_text(errors)}")
        refused, whole = row_errors(errors, todo)
        if whole:  # all or nothing: maybe for one quantity (split), unless about the request itself
            named_first = whole + [e for e in errors if e not in whole]  # the reason: short, its cause first
            raise DeliveryError(f"shopify: userErrors {user_errors_text(named_first)}", retryable=False,
                                splittable=not about_the_request(whole))
        if refused:
            if rounds.dropped:
                raise DeliveryError(f"shopify: more quantities refused after dropping those refused first: "
                                    f"{user_errors_text([e for e in errors if e.get('code') != STALE])}")
            rounds.dropped = True
            for n, why in refused.items():
                self._refuse(todo[n], why)
            self._say_refused(todo[0].update.channel, len(refused), len(todo))
        if not codes & {STALE, PREVIOUS_ATTEMPT_FAILED}:
            return
        self.salts.renew(request)  # C2, C4: the key is spent, a repeat of it answered so again (``KeySalts``)
        if STALE not in codes:  # an earlier try of the key failed: sent again at once, once per request of the batch
            if rounds.renewed > rounds.rereads + rounds.dropped:
                raise DeliveryError(f"shopify: {user_errors_text(errors)} (for a key drawn anew)")
            rounds.renewed += 1
            return
        if rounds.rereads == self.settings.cas_rounds:
            for r in stale_rows(errors, todo):  # C2, C4: the retry reads them (no round left to read them in here)
                self.read_first.add(r.key)
            raise DeliveryError(f"shopify: quantities still moving in the store after {rounds.rereads} re-reads: "
                                f"{user_errors_text(errors)}")
        rounds.rereads += 1
        stale = [r for r in stale_rows(errors, todo) if r.refused is None]
        if stale:
            log.info("shopify: %d of %d quantities had moved in the store (changeFromQuantity stale): reading "
                     "them and setting again", len(stale), len(todo))
            for r in stale:
                self.known.forget(r.key)
                r.expected = None
            await self._read(stale)

    def _say_refused(self, channel: str, refused: int, of: int) -> None:
        """At most one line a second (``SPLIT_LOG_EVERY_S``), with how many were left out: a quantity the store
        refuses (an item not mapped) comes in every batch that carries its SKU, a line for each request before.
        Its dead letter has every one."""
        fields = self._refused_lines.fields(event="publisher_quantities_refused", channel=channel, refused=refused,
                                            quantities=of)
        if fields is None:
            return
        log.warning("shopify: the store refused %d of %d quantities: setting the rest", refused, of, extra=fields)

    async def _set(self, channel: str, updates: list[ChannelUpdate], rows: list[Row]
                   ) -> tuple[str, list[dict[str, Any]]]:
        """The set of ``rows``, with the key its request has now (``KeySalts``): the request's key unsalted, and
        the user errors of its answer."""
        body = set_quantities_body(self.settings.endpoint, channel, updates, rows)
        request = body["variables"]["idempotencyKey"]
        if salt := self.salts.get(request):
            body = set_quantities_body(self.settings.endpoint, channel, updates, rows, salt)
        data = await self._graphql("set", body)
        try:
            errors = data["inventorySetQuantities"]["userErrors"]  # null (no list, as below): not said, not applied
        except (KeyError, TypeError):
            raise DeliveryError("shopify: unexpected response shape") from None
        if not isinstance(errors, list) or not all(isinstance(e, dict) and isinstance(e.get("code"), str | None)
                                                   for e in errors):
            # Read on, a TypeError or AttributeError rose out of the adapter and ended the publisher (C2, C4).
            raise DeliveryError("shopify: unexpected response shape (userErrors: no list of objects with a text code)")
        return request, errors

    async def _read(self, rows: list[Row]) -> None:
        """Fill ``expected`` of ``rows`` with the store's ``available`` quantity now; a row without an
        inventory level is refused."""
        for start in range(0, len(rows), READ_CHUNK):
            chunk = rows[start:start + READ_CHUNK]
            data = await self._graphql("read", read_body(chunk))
            # The whole answer checked before any of it is taken. An alias missing (data null or {}) was read as
            # an unknown item: the row refused for good, dead-lettered and owed only until the next start (C2, C4);
            # quantities that are no list raised TypeError out of the adapter, which ended the publisher.
            missing = [f"q{n}" for n in range(len(chunk)) if f"q{n}" not in data]
            if missing:
                raise DeliveryError(f"shopify: unexpected response shape (the read says nothing of {missing[0]})")
            try:
                found = [available_of(data[f"q{n}"]) for n in range(len(chunk))]
            except ValueError as exc:
                raise DeliveryError(f"shopify: unexpected response shape (read: {exc})") from None
            for r, expected in zip(chunk, found, strict=True):
                r.expected = expected
                if r.expected is None:
                    self._refuse(r, "no inventory level (unknown item or location, or not stocked there)")
                else:
                    self.known.put(r.key, r.expected)
                    self.read_first.discard(r.key)

    async def _graphql(self, kind: str, request: dict[str, Any]) -> dict[str, Any]:
        """One GraphQL request, paced by cost; THROTTLED waits and sends again (bounded). Returns ``data``."""
        body = json.dumps(request, separators=(",", ":")).encode()
        for _ in range(self.settings.http.max_waits + 1):
            await self._pace(kind)
            response = await self._http.post(self.settings.endpoint, body, self._headers)
            check_status(response)
            try:
                payload = response.json()
                self._note_cost(kind, payload.get("extensions"))
            except (ValueError, AttributeError, TypeError):
                raise DeliveryError("shopify: the answer is not a GraphQL response") from None
            errors = payload.get("errors")
            if errors and kind == "set" and set_ran(payload.get("data")):  # about its result's fields: it ran
                if (left_out := self._ran_lines.due()) is not None:  # with every set, where a scope is missing
                    log.warning("shopify: the set ran, its answer with errors (%d such answers left out): %s",
                                left_out, graphql_errors(errors))
                errors = None
            if not errors:
                data = payload.get("data") or {}
                if not isinstance(data, dict):  # a gateway's page: a failed try, not a crash of the loop
                    raise DeliveryError("shopify: the answer is not a GraphQL response (its data is no object)")
                return data
            if not isinstance(errors, list):  # iterated, a TypeError out of the adapter ended the publisher
                raise DeliveryError(f"shopify: the answer is not a GraphQL response (errors: {graphql_errors(errors)})")
            codes = {error_code(e) for e in errors if isinstance(e, dict)}
            if codes != {"THROTTLED"}:
                # Refused before it ran: a value of one quantity, the cost: maybe not a part (split); access: any.
                raise DeliveryError(f"shopify: GraphQL errors {graphql_errors(errors)}",
                                    retryable=bool(codes & RETRYABLE_ERRORS),
                                    splittable=not codes & SAME_FOR_EVERY_PART)
            log.info("shopify: THROTTLED (%s)", (payload.get("extensions") or {}).get("cost"))
        raise DeliveryError(f"shopify: still throttled after {self.settings.http.max_waits} waits")

    def _headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "X-Shopify-Access-Token": self.settings.token}

    async def _pace(self, kind: str) -> None:
        cost = self._cost.get(kind)
        if cost is None:
            return
        wait = self._bucket.wait_s(cost, self._clock())
        if wait > 0:
            await self._http.wait(wait, f"shopify query cost {cost:g}", level=logging.DEBUG)

    def _note_cost(self, kind: str, extensions: Any) -> None:
        cost = (extensions or {}).get("cost")
        if not isinstance(cost, dict):
            return
        if isinstance(cost.get("requestedQueryCost"), int | float):
            self._cost[kind] = float(cost["requestedQueryCost"])
        self._bucket.report(cost.get("throttleStatus"), self._clock())

    async def close(self) -> None:
        await self._http.close()
