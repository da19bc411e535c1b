"""HTTP for the webhook and Shopify adapters: pooled requests that honour a destination's ``Retry-After``.

A 429 or 503 answer with ``Retry-After`` says how long to wait: the request is sent again after
that long (at most ``max_wait_s`` per wait, at most ``max_waits`` waits per request) without
counting as a failed attempt. Past those bounds the answer goes back to the publisher's own retry
loop (backoff, attempts, dead letters), so no destination can hold a publisher forever; the next request
(its retry, or another batch's) still goes no sooner than that answer asked (cut to ``max_wait_s``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

import httpx

from ._decoding import ASKED_ENCODINGS, bounded_decoder
from ._delivery import DeliveryError
from ._lease import check_send

log = logging.getLogger(__name__)
Sleep = Callable[[float], Awaitable[None]]
REQUEST_LINE = "HTTP Request:"
"""How httpx begins the line it writes for each request (at INFO, written at DEBUG), its second argument the URL."""


class RequestLines(logging.Filter):
    """httpx's line for each request is written at DEBUG, only where the publisher's level is DEBUG (``--log-level``):
    at INFO, the default, a line per request was thousands a second at a marketplace's peak, the publisher's own lines
    (dead letters, a lost lease) lost among them. It says the URL without its user information and query: a password
    (a receiver behind HTTP basic authentication is reached with it in ``--url``) or a token the receiver checks was
    written in full at every request, where the service writes a Redis URL's password as ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(REQUEST_LINE):
            return True
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        args = record.args
        if isinstance(args, tuple) and len(args) > 1:
            url = args[1]
            if isinstance(url, httpx.URL) and (url.userinfo or url.query or url.fragment):
                record.args = (args[0], url.copy_with(userinfo=b"", query=None, fragment=None), *args[2:])
        return True


logging.getLogger("httpx").addFilter(RequestLines())
WAITED_STATUSES = frozenset({429, 503})
TOO_LARGE = 413
"""Content Too Large: the destination refuses the request's size (a body limit below ``--batch`` updates)."""
SPLIT_STATUSES = frozenset({400, TOO_LARGE, 422})
"""Refusals of a request that may be for one of its updates (a SKU the destination does not sell, a
value its schema refuses) or its size: ``splittable``, the batch is sent again in halves
(``in_halves``), so that only the updates refused alone are dead-lettered. A refusal of the
endpoint itself (401, 403, 404) is the same for any part."""
_BODY_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


@dataclass(frozen=True)
class HttpSettings:
    timeout_s: float = 10.0
    """Bound of one request, from connecting to the last byte of the answer: a destination that
    trickles its answer cannot hold a delivery past it (the try fails, retryable)."""

    max_answer_bytes: int = 1 << 20
    """Largest answer body read; a larger one fails the try (retryable) instead of filling memory."""

    max_wait_s: float = 60.0
    """Longest wait a destination may ask for (``Retry-After``, Shopify's throttle); longer asks are cut."""

    max_waits: int = 5
    """Waits per request before the answer goes back to the retry loop (an attempt that failed)."""

    def __post_init__(self) -> None:
        # NaN or infinity cut no wait: a Retry-After of a year held the delivery (stock-outs behind it)
        # for as long, its lease renewed and nothing said.
        for name, ok, wanted in (("timeout_s", 0 < self.timeout_s < math.inf, "positive and finite"),
                                 ("max_answer_bytes", self.max_answer_bytes > 0, "positive"),
                                 ("max_wait_s", 0 <= self.max_wait_s < math.inf, "at least 0 and finite"),
                                 ("max_waits", self.max_waits >= 0, "at least 0")):
            if not ok:  # the one at fault, by its field: atp-publisher names the flag (cli.FLAG_OF_FIELD)
                raise ValueError(f"{name}: must be {wanted}, got {getattr(self, name)}")


def retry_after_s(response: httpx.Response, now_s: float) -> float | None:
    """The wait a ``Retry-After`` header asks for (seconds or an HTTP date); None without a valid one."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # RFC 9110: a count of seconds is digits. A negative or NaN one is no valid ask: taken as "at
        # once" it sent max_waits + 1 requests back to back to a receiver saying it struggles; without
        # it the answer goes to the retry loop's backoff. A huge one is cut to max_wait_s.
        return seconds if seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        # RFC 9110: every HTTP date is GMT, the obsolete asctime form saying no zone at all ('-0000' neither). Read in
        # the host's local time, a 30 s ask was hours west of Greenwich (cut to max_wait_s) and nothing east of it.
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_s)


class Http:
    """One pooled client; ``sleep``, ``wall_s`` and ``mono_s`` are injectable so tests assert the asked waits."""

    def __init__(self, settings: HttpSettings, sleep: Sleep = asyncio.sleep,
                 wall_s: Callable[[], float] = time.time, mono_s: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.client = httpx.AsyncClient(timeout=settings.timeout_s, headers={"Accept-Encoding": ASKED_ENCODINGS})
        self._sleep, self._wall_s, self._mono_s = sleep, wall_s, mono_s
        self._not_before = -math.inf
        """Monotonic time before which the destination asked for no request: the ``Retry-After`` of an answer
        handed back unwaited (``max_waits`` waited already), held by the next request, its retry's or another's.
        Not wall time (only an HTTP date is read by it): the host's wall clock set an hour ahead sent that request
        at once, the destination's pacing ignored; set back an hour, it waited ``max_wait_s`` for an ask of 1 s."""

    async def wait(self, seconds: float, why: str, level: int = logging.INFO) -> None:
        """Sleep ``seconds``, cut to ``max_wait_s``."""
        capped = min(seconds, self.settings.max_wait_s)
        log.log(level, "waiting %.3f s before the next request (%s, asked %.3f s)", capped, why, seconds)
        await self._sleep(capped)

    async def post(self, url: str, body: bytes, headers: Callable[[], dict[str, str]],
                   whole_answer: bool = True) -> httpx.Response:
        """POST; ``headers()`` is called per try (a signature carries the time it was made). ``whole_answer``
        False: a 2xx means delivered whatever its body says (a webhook), so a body over ``max_answer_bytes``
        is cut, not a failure."""
        if (still := self._not_before - self._mono_s()) > 0:
            # The retry loop's backoff (0.25 s on a first retry) sent this request seconds after a 'Retry-After: 60':
            # a destination's pacing ignored (it may ban the client). Cut to max_wait_s as any wait.
            await self.wait(still, "Retry-After of the last answer, past max_waits")
        self._not_before = -math.inf
        for waits in range(self.settings.max_waits + 1):
            response = await self._post_once(url, body, headers(), whole_answer)
            asked = retry_after_s(response, self._wall_s()) if response.status_code in WAITED_STATUSES else None
            if asked is None:
                return response
            if waits == self.settings.max_waits:
                self._not_before = self._mono_s() + min(asked, self.settings.max_wait_s)
                return response
            await self.wait(asked, f"HTTP {response.status_code} Retry-After")
        raise AssertionError("unreachable: the last try returns")

    async def _post_once(self, url: str, body: bytes, headers: dict[str, str], whole_answer: bool) -> httpx.Response:
        """One try, bounded as a whole (httpx's timeout bounds each socket operation alone), sent only
        while the publisher's lease covers it (``LeaseLapsing``: a paused holder that woke sends nothing)."""
        check_send()
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                async with self.client.stream("POST", url, content=body, headers=headers) as response:
                    answer = await self._bounded_body(response, whole_answer)
        except TimeoutError:
            raise DeliveryError(f"no whole answer within timeout_s={self.settings.timeout_s:g}s") from None
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
        # The answer as read (decoded already): its headers without those of the encoded body.
        kept = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _BODY_HEADERS]
        return httpx.Response(response.status_code, headers=kept, content=answer, request=response.request)

    async def _bounded_body(self, response: httpx.Response, whole_answer: bool) -> bytes:
        """The answer's body, at most ``max_answer_bytes`` of it. Past that it is cut (the rest unread)
        where only the status counts — any refusal (its reason keeps the first 200 characters), a 2xx
        without ``whole_answer`` — and fails the try only where a 2xx's body is the answer: failing it
        everywhere made a webhook batch the receiver took (a 200 with a large page) be resent and
        finally dead-lettered, and a refusal with a large page be retried as if the answer was lost."""
        limit, parts, size = self.settings.max_answer_bytes, [], 0
        whole = whole_answer and 200 <= response.status_code < 300
        encoding = response.headers.get("Content-Encoding", "")
        # Decoded as read, at most the room left out of each read (``_decoding``): httpx's own decoding expanded a
        # gzip read a thousandfold before the bound was checked, a few KiB sent filling tens of MiB of memory.
        if (decode := bounded_decoder(encoding)) is None:
            if whole:
                raise DeliveryError(f"HTTP {response.status_code}: an answer in an encoding not asked for "
                                    f"({encoding[:50]})")
            return f"(an answer in an encoding not asked for: {encoding[:50]})".encode()
        async for raw in response.aiter_raw():
            try:
                part = decode(raw, limit - size)
            except zlib.error:
                if whole:
                    raise DeliveryError(f"HTTP {response.status_code}: an answer not in its encoding ({encoding[:50]})"
                                        ) from None
                break  # only its status counts: what was decoded is kept
            size += len(part)
            if size > limit:
                if whole:
                    raise DeliveryError(f"HTTP {response.status_code}: an answer over max_answer_bytes={limit}")
                parts.append(part[:limit - (size - len(part))])
                break
            parts.append(part)
        return b"".join(parts)

    async def close(self) -> None:
        await self.client.aclose()


def check_status(response: httpx.Response) -> None:
    """2xx passes; 408/409/425/429/5xx are worth retrying, any other status is not (a 3xx names its
    Location); 400, 413 and 422 are ``splittable``."""
    code = response.status_code
    if 200 <= code < 300:
        return
    reason = f"HTTP {code}: {response.text[:200]}"
    if 300 <= code < 400:
        # Not followed (a signed batch goes only where it was configured to): the operator fixes --url.
        where = response.headers.get("Location", "nowhere named")
        reason = f"HTTP {code}: redirected to {where[:200]}, not followed: --url must name the endpoint itself"
    raise DeliveryError(reason, retryable=code in (408, 409, 425, 429) or code >= 500,
                        splittable=code in SPLIT_STATUSES)
