"""An answer's body decoded as its bytes come, bounded: never more than the room left under ``max_answer_bytes`` out of
one network read. httpx decodes each read whole before a caller sees a byte of it: a gzip or deflate answer expands
about a thousandfold (a 64 KiB read to some 64 MiB, far past the 1 MiB bound, before its check), a brotli one more."""

from __future__ import annotations

import zlib
from collections.abc import Callable

ASKED_ENCODINGS = "gzip, deflate"
"""``Accept-Encoding`` of every request: the encodings decoded here (httpx's default adds ``br`` and ``zstd`` where
their packages are installed, which it decodes unbounded)."""

Decode = Callable[[bytes, int], bytes]
"""(the next bytes read, room) -> what they decode to, at most room + 1 bytes (more than room: past the bound, the
rest left undecoded). Raises ``zlib.error`` for bytes that are not of the encoding."""


def bounded_decoder(content_encoding: str) -> Decode | None:
    """The decoder of an answer whose ``Content-Encoding`` is this; None for an encoding not asked for (``br``, two
    encodings one over the other), whose body is not decoded at all."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return lambda data, room: data[:room + 1]
    if encoding in ("gzip", "x-gzip"):
        return _Zlib(zlib.MAX_WBITS | 16).decode
    if encoding == "deflate":
        return _Zlib(zlib.MAX_WBITS, raw_after_error=True).decode
    return None


class _Zlib:
    def __init__(self, wbits: int, raw_after_error: bool = False) -> None:
        self._inflate = zlib.decompressobj(wbits)
        self._raw_after_error = raw_after_error
        """``deflate`` as servers send it: zlib-wrapped (RFC 9110) or raw, told by the first bytes (as httpx does)."""

    def decode(self, data: bytes, room: int) -> bytes:
        try:
            decoded = self._inflate.decompress(data, room + 1)  # max_length: the output, never past room + 1
        except zlib.error:
            if not self._raw_after_error:
                raise
            self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
            decoded = self._inflate.decompress(data, room + 1)
        self._raw_after_error = False
        return decoded
