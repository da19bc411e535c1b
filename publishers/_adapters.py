"""Where a channel's updates go. An adapter delivers one ordered batch or raises ``DeliveryError``.

- ``webhook``: HTTP POST of JSON ``{"channel": ..., "updates": [...]}`` signed per Standard Webhooks
  (https://www.standardwebhooks.com): headers ``webhook-id`` (the same for every try of one batch,
  so a receiver can drop a repeat), ``webhook-timestamp`` (unix seconds of this try) and
  ``webhook-signature`` (``v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>``), the key given
  as ``whsec_<base64>`` (several, space-separated, while a key is rotated: one signature each). A
  receiver verifies with any Standard Webhooks library.
- ``jsonl``: one JSON object per update appended to a file (fsync per batch), in a thread, bounded in time.
- ``shopify``: ``publishers._shopify``.
"""

from __future__ import annotations

import asyncio
import binascii
import concurrent.futures
import hashlib
import json
import math
import os
import stat
import threading
import time
from base64 import b64decode
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
from standardwebhooks import Webhook

from atp_service.logs import EveryInterval
from reservation import ChannelUpdate

from ._delivery import SPLIT_LOG_EVERY_S, Adapter, DeliveryError, Refused, in_halves, update_json
from ._http import Http, HttpSettings, Sleep, check_status

__all__ = ["Adapter", "DeliveryError", "JsonlAdapter", "WebhookAdapter", "update_json", "webhook_id",
           "webhook_signer", "webhook_signers"]

SECRET_PREFIX = "whsec_"
SECRET_BYTES = range(24, 65)
"""Standard Webhooks: a key of 24 to 64 random bytes."""


def webhook_signer(secret: str) -> Webhook:
    """The signer of a ``whsec_<base64>`` secret; a ValueError names what is wrong with it."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("ATP_WEBHOOK_SECRET: required, a Standard Webhooks secret 'whsec_<base64 key>'")
    try:
        key = b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("ATP_WEBHOOK_SECRET: the part after 'whsec_' is not base64") from None
    if len(key) not in SECRET_BYTES:
        raise ValueError(f"ATP_WEBHOOK_SECRET: the key is {len(key)} bytes, Standard Webhooks wants 24 to 64")
    return Webhook(secret)


def webhook_signers(secrets: str) -> list[Webhook]:
    """One signer per key of a space-separated list: while a key is rotated, each request carries a
    signature by the old and by the new one (Standard Webhooks' way), so a receiver holding either verifies."""
    keys = secrets.split()
    if not keys:
        raise ValueError("ATP_WEBHOOK_SECRET: required, a Standard Webhooks secret 'whsec_<base64 key>'")
    return [webhook_signer(key) for key in keys]


def webhook_id(url: str, channel: str, updates: list[ChannelUpdate]) -> str:
    """The id of one batch's delivery: versions are unique within a channel, so the same batch to the
    same endpoint gets the same id on every try, also after a restart; another batch never does."""
    versions = ",".join(str(u.version) for u in updates)
    digest = hashlib.sha256(f"{url}\n{channel}\n{versions}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


class WebhookAdapter:
    name = "webhook"

    def __init__(self, url: str, secret: str, http: HttpSettings | None = None, sleep: Sleep = asyncio.sleep,
                 wall_s: Callable[[], float] = time.time, mono_s: Callable[[], float] = time.monotonic) -> None:
        self.url, self._signers = url, webhook_signers(secret)
        self._wall_s = wall_s
        self._http = Http(http or HttpSettings(), sleep, wall_s, mono_s)
        self._split_lines = EveryInterval(SPLIT_LOG_EVERY_S)

    async def deliver(self, channel: str, updates: list[ChannelUpdate]) -> list[Refused]:
        """One request; a batch the receiver finds too large (413) or refuses as a whole for what may be
        one update of it (400, 422) is sent again in halves down to single updates (``in_halves``): only
        the updates refused alone are dead-lettered. Each part has its own ``webhook-id`` (its
        versions), the same on every try of it."""
        return await in_halves(channel, updates, lambda part: self._send(channel, part), lines=self._split_lines)

    async def _send(self, channel: str, updates: list[ChannelUpdate]) -> None:
        check_status(await self._post(channel, updates))

    async def _post(self, channel: str, updates: list[ChannelUpdate]) -> httpx.Response:
        body = json.dumps({"channel": channel, "updates": [update_json(u) for u in updates]},
                          separators=(",", ":")).encode()
        msg_id = webhook_id(self.url, channel, updates)

        def headers() -> dict[str, str]:
            # Signed anew per try: the receiver refuses timestamps far from its clock (replays).
            sent = datetime.fromtimestamp(int(self._wall_s()), tz=UTC)
            return {"Content-Type": "application/json", "webhook-id": msg_id,
                    "webhook-timestamp": str(int(sent.timestamp())),
                    "webhook-signature": " ".join(s.sign(msg_id, sent, body.decode()) for s in self._signers)}

        return await self._http.post(self.url, body, headers, whole_answer=False)  # 2xx: delivered, whatever it says

    async def close(self) -> None:
        await self._http.close()


class JsonlAdapter:
    """Appends in a thread of its own, one write at a time, each bounded by ``timeout_s``: a stuck
    disk (a hung NFS mount, a FIFO nobody reads) must not freeze the event loop, or the lease is not
    renewed, a standby takes over and writes newer levels, and this write lands after them (C3, C4),
    and a stop is never answered. A write still stuck fails the next tries at once (retryable) until
    it ends: a later batch is never written before an earlier one."""

    name = "jsonl"

    def __init__(self, path: Path, timeout_s: float = 10.0) -> None:
        if not 0 < timeout_s < math.inf:
            raise ValueError(f"jsonl timeout_s (--request-timeout): must be positive and finite, got {timeout_s}")
        self.path, self.timeout_s = path, timeout_s
        self._writing: concurrent.futures.Future[None] | None = None

    async def deliver(self, channel: str, updates: list[ChannelUpdate]) -> None:
        if self._writing is not None and not self._writing.done():
            raise DeliveryError(f"jsonl: the previous write to {self.path} has not ended (a stuck disk?)")
        data = "".join(json.dumps(update_json(u), separators=(",", ":")) + "\n" for u in updates).encode()
        self._writing = writing = _in_daemon_thread(lambda: self._append(data))
        waited = asyncio.wrap_future(writing)
        # A write that outlives its try may still fail: retrieved here, not logged as never retrieved.
        waited.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            await asyncio.wait_for(asyncio.shield(waited), self.timeout_s)
        except TimeoutError:
            raise DeliveryError(f"jsonl: the write to {self.path} did not end within {self.timeout_s:g} s") from None

    def _append(self, data: bytes) -> None:
        try:
            torn = _after_torn_line(self.path)
            with self.path.open("ab") as f:
                f.write(torn + data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise DeliveryError(f"jsonl: cannot append to {self.path}: {exc.strerror}") from None

    async def close(self) -> None:
        return None


def _after_torn_line(path: Path) -> bytes:
    """A newline where the file (a regular one) ends inside a line: one torn by a writer killed
    mid-write (kill -9, power lost, a stuck write cut off at its exit). Appended onto, the torn line
    took the next update with it for any reader that drops a line it cannot parse."""
    try:
        found = os.stat(path)  # first: opening a FIFO to read would wait for a writer
    except FileNotFoundError:
        return b""
    if not stat.S_ISREG(found.st_mode) or not found.st_size:
        return b""
    try:
        with path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            return b"" if f.read(1) == b"\n" else b"\n"
    except OSError:  # a file this publisher may append to but not read: it cannot tell, and appends as before
        return b""


def _in_daemon_thread(work: Callable[[], None]) -> concurrent.futures.Future[None]:
    """``work`` run in a daemon thread: one stuck in a system call never keeps the process from exiting
    (an executor's threads are joined at exit)."""
    future: concurrent.futures.Future[None] = concurrent.futures.Future()

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the awaiting delivery
            future.set_exception(exc)
        else:
            future.set_result(None)

    threading.Thread(target=run, name="jsonl-append", daemon=True).start()
    return future
