"""The line httpx writes for each request (``HTTP Request: POST <url> ...``, written with ``--log-level DEBUG``)
says the destination without what its URL may carry for the receiver alone: a password (a receiver behind HTTP basic
authentication is reached with it in ``--url``) and the query (a token the receiver checks). Real local HTTP server."""

from __future__ import annotations

import logging

import pytest

from publishers import WebhookAdapter
from tests.publishers.http_helpers import Clock, serve
from tests.publishers.test_webhook import SECRET, update


async def test_the_line_of_each_request_says_no_password_nor_query_of_the_url(
        caplog: pytest.LogCaptureFixture) -> None:
    """Said in full at every request: 'HTTP Request: POST http://user:pa55word@127.0.0.1:PORT/hook?token=s3cret
    "HTTP/1.0 204 No Content"', where the service writes a Redis URL's password as ***."""
    with serve(lambda path, headers, body: (204, {}, b"")) as url:
        host = url.removeprefix("http://")
        adapter = WebhookAdapter(f"http://user:pa55word@{host}/hook?token=s3cret", SECRET, sleep=Clock().sleep)
        try:
            with caplog.at_level(logging.DEBUG):
                await adapter.deliver("web", [update("a", 1, 1)])
        finally:
            await adapter.close()
    said = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert said == [f'HTTP Request: POST http://{host}/hook "HTTP/1.0 204 No Content"'], said
    assert not any("pa55word" in r.getMessage() or "s3cret" in r.getMessage() for r in caplog.records)
