"""A Shopify store's Admin GraphQL endpoint, as far as the shopify adapter uses it, behind a real
local HTTP server: ``inventorySetQuantities`` as of API version 2026-04 (``changeFromQuantity``
per quantity, ``@idempotent`` required, the old compare fields gone, all or nothing: every user
error of the input at once, its ``field`` naming the quantity), the aliased
``inventoryItem { inventoryLevel { quantities } }`` read (null for an unknown item, a null level
where the item is not stocked), and the query cost in ``extensions``. Refusals of a whole request for
one of its items, as Shopify answers them: an id it cannot parse as a global id refuses the request
before it runs (a top-level ``errors`` entry: the variable's invalid value, with the path of the
problem in ``extensions.problems``); an item named in ``whole_refusals`` refuses the set with one
user error whose ``field`` names no single quantity."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from typing import Any

from tests.publishers.http_helpers import Answer

VERSION = "2026-10"
TOKEN = "shpat_test"
SET_DIRECTIVE = "@idempotent(key: $idempotencyKey)"


def answer(payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Answer:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode()


def throttled(requested: float, available: float, restore: float, maximum: float = 2000.0) -> Answer:
    """Shopify's THROTTLED answer: nothing ran; the cost it needed and the bucket now."""
    return answer({"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                   "extensions": {"cost": {"requestedQueryCost": requested, "actualQueryCost": None,
                                           "throttleStatus": {"maximumAvailable": maximum,
                                                              "currentlyAvailable": available,
                                                              "restoreRate": restore}}}})


class Store:
    def __init__(self, levels: dict[tuple[str, str], int], locations: tuple[str, ...] = ()) -> None:
        self.levels = dict(levels)
        self.items = {item for item, _ in levels}
        self.locations = {location for _, location in levels} | set(locations)
        """Items and locations that exist (an item is stocked only where ``levels`` has it)."""
        self.requests: list[dict[str, Any]] = []
        self.script: list[Answer] = []
        """Canned answers given (in order) before the store answers for itself."""
        self.lose_next_answers = 0
        """Sets applied whose answer is then lost (HTTP 502), as when a connection drops."""
        self.fail_next_sets = 0
        """Sets that fail inside Shopify (nothing applied, ``INTERNAL_SERVER_ERROR``): their key stays failed, a
        repeat of it answered ``IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED`` ("Retry with a new idempotency key")."""
        self.failed_keys: set[str] = set()
        self.before_set: Callable[[Store], None] = lambda store: None
        self.applied = 0
        self.applied_items: list[str] = []
        """Every item a set applied, in the order applied."""
        self.unparsable: set[str] = set()
        """Ids Shopify cannot parse as global ids: a read or set carrying one is refused as a whole."""
        self.whole_refusals: dict[str, list[str] | None] = {}
        """Items whose set is refused as a whole by one user error with this ``field`` (None, or a path
        that names no single quantity)."""
        self.bucket = {"maximumAvailable": 2000.0, "currentlyAvailable": 2000.0, "restoreRate": 100.0}
        self._keys: dict[str, tuple[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def sets(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if "inventorySetQuantities" in r["query"]]

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> Answer:
        with self._lock:
            if path != f"/admin/api/{VERSION}/graphql.json":
                return 404, {}, b"Not Found"
            if headers.get("X-Shopify-Access-Token") != TOKEN:
                return 401, {}, b"Invalid API key or access token"
            request = json.loads(body)
            self.requests.append(request)
            if self.script:
                return self.script.pop(0)
            if refused := self._unparsable(request["variables"]):
                return refused
            if "inventorySetQuantities" in request["query"]:
                return self._set(request)
            return self._read(request)

    def _cost(self, requested: float) -> dict[str, Any]:
        return {"cost": {"requestedQueryCost": requested, "actualQueryCost": requested,
                         "throttleStatus": dict(self.bucket)}}

    def _set(self, request: dict[str, Any]) -> Answer:
        variables, query = request["variables"], request["query"]
        data = variables["input"]
        if SET_DIRECTIVE not in query or not variables.get("idempotencyKey"):
            return answer({"errors": [{"message": "An idempotency key is required",
                                       "extensions": {"code": "BAD_REQUEST"}}]})
        removed = [f for f in ("ignoreCompareQuantity", "compareQuantity") if f in json.dumps(data)]
        if removed or any("changeFromQuantity" not in q for q in data["quantities"]):
            return answer({"errors": [{"message": f"argument not accepted or missing: {removed or 'changeFrom'}",
                                       "extensions": {"code": "argumentNotAccepted"}}]})
        key, fingerprint = variables["idempotencyKey"], json.dumps(data, sort_keys=True)
        if key in self.failed_keys:
            return answer({"data": self._user_errors([{
                "field": None, "code": "IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED",
                "message": "A previous request with this idempotency key failed. Retry with a new idempotency key."}]),
                "extensions": self._cost(10)})
        if key in self._keys:  # a repeat: the first answer, nothing applied again
            seen, result = self._keys[key]
            if seen != fingerprint:
                result = self._user_errors([{"field": None, "code": "IDEMPOTENCY_KEY_PARAMETER_MISMATCH",
                                             "message": "same key, other parameters"}])
            return answer({"data": result, "extensions": self._cost(10)})
        self.before_set(self)
        if self.fail_next_sets:
            self.fail_next_sets -= 1
            self.failed_keys.add(key)
            return answer({"errors": [{"message": "Internal error", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]})
        result = self._apply(data["quantities"])
        self._keys[key] = (fingerprint, result)
        if self.lose_next_answers:
            self.lose_next_answers -= 1
            return 502, {}, b"Bad Gateway"
        return answer({"data": result, "extensions": self._cost(10)})

    def _unparsable(self, variables: dict[str, Any]) -> Answer | None:
        """A request naming an id that is no global id: refused before it runs, nothing applied, no key kept."""
        found = [(name, [], value) for name, value in variables.items()
                 if isinstance(value, str) and value in self.unparsable]
        for n, q in enumerate((variables.get("input") or {}).get("quantities") or []):
            found += [("input", ["quantities", n, f], q[f]) for f in ("inventoryItemId", "locationId")
                      if q[f] in self.unparsable]
        if not found:
            return None
        name, path, value = found[0]
        where = ".".join(str(p) for p in path)
        return answer({"errors": [{
            "message": f"Variable ${name} was provided invalid value{' for ' + where if where else ''} "
                       f"(Invalid global id '{value}')",
            "locations": [{"line": 1, "column": 10}],
            "extensions": {"value": variables[name], "problems": [{"path": path,
                                                                   "explanation": f"Invalid global id '{value}'"}]}}]})

    def _apply(self, quantities: list[dict[str, Any]]) -> dict[str, Any]:
        whole = [self.whole_refusals[q["inventoryItemId"]] for q in quantities
                 if q["inventoryItemId"] in self.whole_refusals]
        if whole:  # one error about the input, naming no single quantity
            return self._user_errors([{"field": whole[0], "code": "NON_MUTABLE_INVENTORY_ITEM",
                                       "message": "An inventory item is not allowed to be adjusted via API."}])
        errors = []
        for n, q in enumerate(quantities):
            key = (q["inventoryItemId"], q["locationId"])
            if q["inventoryItemId"] not in self.items:
                errors.append({"field": ["input", "quantities", str(n), "inventoryItemId"],
                               "code": "INVALID_INVENTORY_ITEM",
                               "message": "The specified inventory item could not be found."})
            elif q["locationId"] not in self.locations:
                errors.append({"field": ["input", "quantities", str(n), "locationId"],
                               "code": "INVALID_LOCATION", "message": "The specified location could not be found."})
            elif key not in self.levels:
                errors.append({"field": ["input", "quantities", str(n), "locationId"],
                               "code": "ITEM_NOT_STOCKED_AT_LOCATION",
                               "message": "The specified inventory item is not stocked at the location."})
            elif q["changeFromQuantity"] is not None and q["changeFromQuantity"] != self.levels[key]:
                errors.append({"field": ["input", "quantities", str(n), "changeFromQuantity"],
                               "code": "CHANGE_FROM_QUANTITY_STALE",
                               "message": "The changeFromQuantity value does not match persisted value."})
        if errors:  # all or nothing
            return self._user_errors(errors)
        for q in quantities:
            self.levels[(q["inventoryItemId"], q["locationId"])] = q["quantity"]
            self.applied_items.append(q["inventoryItemId"])
        self.applied += 1
        return {"inventorySetQuantities": {"inventoryAdjustmentGroup": {"id": f"gid://shopify/Group/{self.applied}"},
                                           "userErrors": []}}

    @staticmethod
    def _user_errors(errors: list[dict[str, Any]]) -> dict[str, Any]:
        return {"inventorySetQuantities": {"inventoryAdjustmentGroup": None, "userErrors": errors}}

    def _read(self, request: dict[str, Any]) -> Answer:
        variables, data = request["variables"], {}
        for alias in re.findall(r"(q\d+): inventoryItem", request["query"]):
            n = alias[1:]
            level = self.levels.get((variables[f"i{n}"], variables[f"l{n}"]))
            data[alias] = None if variables[f"i{n}"] not in self.items else {
                "inventoryLevel": None if level is None else {"quantities": [{"name": "available", "quantity": level}]}}
        return answer({"data": data, "extensions": self._cost(2 * len(data))})
