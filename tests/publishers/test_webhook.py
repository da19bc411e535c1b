"""The webhook adapter signs per Standard Webhooks (verified with the ``standardwebhooks`` package, as
a receiver does) and waits as a receiver's ``Retry-After`` asks (on an injected clock)."""

from __future__ import annotations

import base64
import threading
import time
from email.utils import formatdate

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from publishers import DeliveryError, HttpSettings, WebhookAdapter, webhook_signer
from reservation import ChannelUpdate, StockStatus
from tests.publishers.http_helpers import Answer, Clock, serve

SECRET = "whsec_" + base64.b64encode(b"another test key, 32 bytes long").decode()


def update(sku: str, quantity: int, version: int) -> ChannelUpdate:
    return ChannelUpdate("web", sku, "", quantity, None, StockStatus.IN_STOCK, version, 0, 0, 0)


class Recorder:
    """Answers from ``script`` (then 204) and keeps every request's headers and body."""

    def __init__(self, script: list[Answer] | None = None) -> None:
        self.script = list(script or [])
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> Answer:
        with self.lock:
            self.got.append((headers, body))
            return self.script.pop(0) if self.script else (204, {}, b"")


async def test_a_receiver_verifies_the_signature_and_a_tampered_body_fails() -> None:
    recorder = Recorder()
    with serve(recorder.handle) as url:
        adapter = WebhookAdapter(url, SECRET)
        await adapter.deliver("web", [update("a", 5, 1), update("b", 0, 2)])
        await adapter.close()
    [(headers, body)] = recorder.got
    payload = Webhook(SECRET).verify(body, headers)
    assert [(u["sku"], u["quantity"], u["version"]) for u in payload["updates"]] == [("a", 5, 1), ("b", 0, 2)]
    assert headers["webhook-id"].startswith("msg_") and headers["webhook-signature"].startswith("v1,")
    tampered = body.replace(b'"quantity":0', b'"quantity":9')
    assert tampered != body
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(tampered, headers)
    with pytest.raises(WebhookVerificationError):  # another key
        Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(body, headers)


async def test_retry_after_is_waited_and_every_try_carries_the_same_id_signed_anew() -> None:
    clock = Clock(start=float(int(time.time())))  # near real time: the receiver checks the timestamp
    in_ten_s = formatdate(clock.now + 10, usegmt=True)
    recorder = Recorder([(429, {"Retry-After": "7"}, b""), (503, {"Retry-After": in_ten_s}, b"")])
    with serve(recorder.handle) as url:
        adapter = WebhookAdapter(url, SECRET, sleep=clock.sleep, wall_s=clock)
        await adapter.deliver("web", [update("a", 5, 1)])
        await adapter.close()
    assert clock.slept == [7.0, pytest.approx(3.0)]  # seconds; then an HTTP date 10 s from the start
    ids = {h["webhook-id"] for h, _ in recorder.got}
    stamps = [int(h["webhook-timestamp"]) for h, _ in recorder.got]
    assert len(recorder.got) == 3 and len(ids) == 1
    assert stamps == [stamps[0], stamps[0] + 7, stamps[0] + 10]
    for headers, body in recorder.got:
        Webhook(SECRET).verify(body, headers)


async def test_waits_asked_by_a_receiver_are_cut_and_bounded() -> None:
    clock = Clock()
    recorder = Recorder([(429, {"Retry-After": "3600"}, b"slow down")] * 3)
    with serve(recorder.handle) as url:
        adapter = WebhookAdapter(url, SECRET, HttpSettings(max_wait_s=30, max_waits=2), clock.sleep, clock)
        with pytest.raises(DeliveryError) as failed:
            await adapter.deliver("web", [update("a", 5, 1)])
        await adapter.close()
    assert clock.slept == [30, 30] and len(recorder.got) == 3
    assert failed.value.retryable and failed.value.reason.startswith("HTTP 429")


async def test_while_a_key_is_rotated_each_request_is_signed_by_old_and_new() -> None:
    new = "whsec_" + base64.b64encode(b"the new key of thirty-two bytes!").decode()
    recorder = Recorder()
    with serve(recorder.handle) as url:
        adapter = WebhookAdapter(url, f"{SECRET} {new}")
        await adapter.deliver("web", [update("a", 5, 1)])
        await adapter.close()
    [(headers, body)] = recorder.got
    assert len(headers["webhook-signature"].split(" ")) == 2
    for key in (SECRET, new):  # a receiver still on the old key, and one already on the new
        Webhook(key).verify(body, headers)


def test_a_secret_must_be_a_standard_webhooks_key() -> None:
    for bad, says in (("s3cret", "whsec_"), ("whsec_not base64!", "not base64"),
                      ("whsec_" + base64.b64encode(b"short").decode(), "5 bytes, Standard Webhooks wants 24 to 64"),
                      ("whsec_" + base64.b64encode(b"x" * 65).decode(), "65 bytes")):
        with pytest.raises(ValueError, match=says):
            webhook_signer(bad)
    assert isinstance(webhook_signer(SECRET), Webhook)
