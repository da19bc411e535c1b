"""httpx's line for each request (``HTTP Request: POST <url> ...``) is written only where the publisher logs at DEBUG
(``--log-level DEBUG``), at DEBUG: at INFO, the publisher's default, it was one line per request, thousands a second at
a marketplace's peak, burying the publisher's own lines. Real local HTTP server, the publisher's own logging set-up."""

from __future__ import annotations

import io

from atp_service.logs import set_up_logging
from publishers import WebhookAdapter
from tests.publishers.http_helpers import Clock, serve
from tests.publishers.test_webhook import SECRET, update


async def written_at(level: str) -> str:
    """What the publisher's log says while a webhook delivers one batch, at ``level``."""
    said = io.StringIO()
    set_up_logging(level, "text", said)  # the root logger's handlers and level put back after (conftest)
    with serve(lambda path, headers, body: (204, {}, b"")) as url:
        adapter = WebhookAdapter(f"{url}/hook", SECRET, sleep=Clock().sleep)
        try:
            await adapter.deliver("web", [update("a", 1, 1)])
        finally:
            await adapter.close()
    return said.getvalue()


async def test_the_line_of_each_request_is_written_at_debug_only() -> None:
    assert "HTTP Request:" not in await written_at("INFO")
    lines = [line for line in (await written_at("DEBUG")).splitlines() if "HTTP Request:" in line]
    assert len(lines) == 1 and " DEBUG httpx: HTTP Request: POST http://127.0.0.1:" in lines[0], lines
