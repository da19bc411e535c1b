"""What the Shopify adapter keeps between requests: store quantities it knows, Shopify's cost bucket."""

from __future__ import annotations

import math
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from reservation import ChannelUpdate

STALE = "CHANGE_FROM_QUANTITY_STALE"
PREVIOUS_ATTEMPT_FAILED = "IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED"
CONCURRENT = "IDEMPOTENCY_CONCURRENT_REQUEST"
"""The same key is in use by a try still running at Shopify: this one did not run; the key's next answer is that
try's outcome."""


@dataclass(slots=True)
class Row:
    """One quantity of a batch: set ``item`` at ``location`` to ``quantity``, expecting ``expected`` there."""

    item: str
    location: str
    quantity: int
    expected: int | None
    """The ``changeFromQuantity``: what the store holds as far as we know (None: not known yet)."""
    update: ChannelUpdate
    refused: str | None = None
    """Why the store cannot take this quantity (dead-lettered alone); None while it can."""

    @property
    def key(self) -> tuple[str, str]:
        return self.item, self.location


_K = TypeVar("_K")
_V = TypeVar("_V")


class _Recent(Generic[_K, _V]):
    """At most ``limit`` values by key, the least recently put or found forgotten first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._values: OrderedDict[_K, _V] = OrderedDict()

    def _found(self, key: _K) -> _V | None:
        value = self._values.get(key)
        if value is not None:
            self._values.move_to_end(key)
        return value

    def _put(self, key: _K, value: _V) -> None:
        self._values[key] = value
        self._values.move_to_end(key)
        while len(self._values) > self.limit:
            self._values.popitem(last=False)

    def _forget(self, key: _K) -> None:
        self._values.pop(key, None)


class KnownQuantities(_Recent[tuple[str, str], int]):
    """The store's quantity per (item, location) after our last set or read; bounded, least recent
    forgotten first (a forgotten one is read again when needed)."""

    def get(self, key: tuple[str, str]) -> int | None:
        return self._found(key)

    def put(self, key: tuple[str, str], value: int) -> None:
        self._put(key, value)

    def forget(self, key: tuple[str, str]) -> None:
        self._forget(key)


class ReadFirst(_Recent[tuple[str, str], bool]):
    """(item, location) pairs whose store quantity moved past the expectation their batch was given up with (a stale
    compare and no ``cas_rounds`` left): read before their next set, whatever this process or the update's
    ``previous`` says. Kept of them, such a retry sent the expectation of the try before, never read with no round to
    read it in (``--shopify-cas-rounds 0``), answered stale for good: the stock-out never set (C2, C4). Bounded, least
    recent forgotten first; a pair forgotten (or a restart) costs one more stale answer."""

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def add(self, key: tuple[str, str]) -> None:
        self._put(key, True)

    def discard(self, key: tuple[str, str]) -> None:
        self._forget(key)


class KeySalts(_Recent[str, int]):
    """Per request (its idempotency key unsalted) the salt of the key it is sent with now, once a key of it was spent:
    answered ``IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED`` (Shopify keeps a failed key failed for its retention: "retry with
    a new idempotency key") or a refusal that applied nothing (a stale compare: Shopify answers a repeat of the key
    with that first answer, whatever the store holds since). The new salt is drawn at random and remembered (bounded,
    least recent forgotten first), so the next try of the request, the publisher's retry, sends it at once: a salt
    counted from 0 at each try walked the spent keys again, each a re-read, and past ``cas_rounds`` of them the request
    never went out again, its stock-out never set (C2, C4). A salt forgotten (a restart) costs one spent answer."""

    def get(self, request: str) -> int:
        return self._found(request) or 0

    def renew(self, request: str) -> None:
        self._put(request, secrets.randbits(64) | 1)  # never 0: the unsalted key


class CostBucket:
    """Shopify's leaky bucket of query cost as last reported (``extensions.cost.throttleStatus``),
    refilled at ``restoreRate`` since: how long a request of some cost must wait to fit."""

    def __init__(self) -> None:
        self.available: float | None = None
        self.maximum = math.inf
        self.restore_rate = 0.0
        self.at = 0.0

    def report(self, status: Any, now: float) -> None:
        if not isinstance(status, dict):
            return
        try:
            available, rate = float(status["currentlyAvailable"]), float(status["restoreRate"])
        except (KeyError, TypeError, ValueError):
            return
        self.available, self.restore_rate, self.at = available, rate, now
        maximum = status.get("maximumAvailable")
        self.maximum = float(maximum) if isinstance(maximum, int | float) else math.inf

    def wait_s(self, cost: float, now: float) -> float:
        if self.available is None or self.restore_rate <= 0:
            return 0.0
        have = min(self.maximum, self.available + self.restore_rate * max(0.0, now - self.at))
        return max(0.0, (cost - have) / self.restore_rate)


def available_of(item: Any) -> int | None:
    """The ``available`` quantity in one aliased ``inventoryItem`` answer (None: no such level: an unknown
    item, null, or one not stocked at the location, a null level). ValueError: an answer of another shape,
    which says nothing of the item (a proxy's or broken gateway's page): a failed try, not a refusal."""
    if item is None:
        return None
    if not isinstance(item, dict) or "inventoryLevel" not in item:
        raise ValueError(f"an item that is no inventoryItem: {str(item)[:100]}")
    level = item["inventoryLevel"]
    if level is None:
        return None
    quantities = level.get("quantities") if isinstance(level, dict) else None
    if not isinstance(quantities, list):
        raise ValueError(f"a level that is no inventoryLevel with its quantities: {str(level)[:100]}")
    for q in quantities:
        if isinstance(q, dict) and q.get("name") == "available" and isinstance(q.get("quantity"), int):
            return int(q["quantity"])
    return None


def read_body(rows: list[Row]) -> dict[str, Any]:
    """One query reading the ``available`` quantity of each row (aliases ``q0``, ``q1``, ...)."""
    params = ", ".join(f"$i{n}: ID!, $l{n}: ID!" for n in range(len(rows)))
    fields = " ".join(f"q{n}: inventoryItem(id: $i{n}) {{ inventoryLevel(locationId: $l{n}) {{ "
                      f'quantities(names: ["available"]) {{ name quantity }} }} }}' for n in range(len(rows)))
    variables: dict[str, Any] = {}
    for n, r in enumerate(rows):
        variables[f"i{n}"], variables[f"l{n}"] = r.item, r.location
    return {"query": f"query AtpAvailable({params}) {{ {fields} }}", "variables": variables}


def stale_rows(errors: list[dict[str, Any]], rows: list[Row]) -> list[Row]:
    """The rows a ``CHANGE_FROM_QUANTITY_STALE`` error names (``field``: input, quantities, <index>, ...);
    every row when an error names none."""
    found: dict[int, Row] = {}
    for error in errors:
        if error.get("code") != STALE:
            continue
        index = _quantity_index(error.get("field"))
        if index is None or not 0 <= index < len(rows):
            return list(rows)
        found[index] = rows[index]
    return [found[i] for i in sorted(found)]


def row_errors(errors: list[dict[str, Any]], rows: list[Row]) -> tuple[dict[int, str], list[dict[str, Any]]]:
    """The user errors of a set, split: by row index, ``CODE: message`` of those about one quantity
    (``field``: input, quantities, <index>, ...: an unknown item or location, an item not stocked
    there, a quantity out of range); and those about the request as a whole (no such ``field``,
    an idempotency error). A stale compare or a failed earlier attempt is in neither."""
    by_row: dict[int, list[str]] = {}
    whole: list[dict[str, Any]] = []
    for error in errors:
        code = error.get("code")
        if code in (STALE, PREVIOUS_ATTEMPT_FAILED):
            continue
        index = _quantity_index(error.get("field"))
        if index is None or not 0 <= index < len(rows) or str(code).startswith("IDEMPOTENCY_"):
            whole.append(error)
        else:
            by_row.setdefault(index, []).append(f"{code}: {str(error.get('message'))[:200]}")
    return {n: "; ".join(reasons) for n, reasons in by_row.items()}, whole


def about_the_request(whole: list[dict[str, Any]]) -> bool:
    """Whether user errors naming no single quantity are about the request itself, the same for any
    part of the batch: an idempotency error, or a ``field`` naming another input field than the
    quantities (``reason``, ``name``). Any other (no ``field``, the quantities as a whole) may be for
    one of the quantities."""
    for error in whole:
        path = error.get("field")
        if str(error.get("code")).startswith("IDEMPOTENCY_"):
            return True
        if isinstance(path, list) and len(path) > 1 and path[0] == "input" and path[1] != "quantities":
            return True
    return False


def set_ran(data: Any) -> bool:
    """Whether a set answered with top-level errors ran all the same: its ``inventorySetQuantities`` an object whose
    ``userErrors`` is a list (GraphQL nulls a field it failed to resolve: the errors are about fields of the result,
    such as an ``inventoryAdjustmentGroup`` the app may not read). Its ``userErrors`` then say what it did: read as a
    refusal before it ran, an applied stock-out was dead-lettered, counted failed and owed, or retried with its key
    (answered so again) until it was. ``userErrors`` null: whether it applied is not said, a failed try as before."""
    result = data.get("inventorySetQuantities") if isinstance(data, dict) else None
    return isinstance(result, dict) and isinstance(result.get("userErrors"), list)


def graphql_errors(errors: Any) -> str:
    """Top-level GraphQL errors, short: each one's code and message (not its ``extensions.value``, which
    may repeat the whole input)."""
    if not isinstance(errors, list):
        return str(errors)[:300]
    said = [_graphql_error(e) if isinstance(e, dict) else str(e)[:200] for e in errors[:3]]
    return "; ".join(said) + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else "")


def user_errors_text(errors: list[Any]) -> str:
    """User errors, short: the first three (``CODE at field: message``, 200 characters of a message) and
    how many more. The whole list (one per quantity of a batch of up to 250) was copied into the
    reason of each of the batch's dead letters."""
    said = [_user_error(e) for e in errors[:3]]
    return "; ".join(said) + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else "")


def _user_error(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)[:200]
    path = error.get("field")
    where = f" at {'.'.join(str(p) for p in path)[:100]}" if isinstance(path, list) else ""
    return f"{error.get('code')}{where}: {str(error.get('message'))[:200]}"


def error_code(error: Any) -> Any:
    """A top-level GraphQL error's ``extensions.code`` (None: none, or an error or extensions that are no object)."""
    extensions = error.get("extensions") if isinstance(error, dict) else None
    code = extensions.get("code") if isinstance(extensions, dict) else None
    return code if isinstance(code, str) else None  # a code of another type: none (a set of codes is made of them)


def _graphql_error(error: dict[str, Any]) -> str:
    code, message = error_code(error), str(error.get("message"))[:200]
    return f"{code}: {message}" if code else message


def _quantity_index(path: Any) -> int | None:
    if not isinstance(path, list) or "quantities" not in path:
        return None
    after = path.index("quantities") + 1
    try:
        return int(path[after])
    except (IndexError, TypeError, ValueError):
        return None
