"""A real HTTP server on loopback whose answers a test scripts: ``serve(handle)`` gives its URL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any

from benchmarks.loopback_http import serving

Answer = tuple[int, dict[str, str], bytes]
Handle = Callable[[str, dict[str, str], bytes], Answer]
"""(path, headers, body) -> (status, headers, body)."""


@contextmanager
def serve(handle: Handle) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status, headers, answer = handle(self.path, dict(self.headers.items()), body)
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(answer))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Handler) as url:
        yield url


class Clock:
    """Injectable time: ``sleep`` records the asked wait and moves the clock by it (no real waiting)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
