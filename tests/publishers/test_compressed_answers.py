"""``max_answer_bytes`` bounds an answer's DECODED bytes as they are decoded: httpx decoded each network read whole
before the bound was checked, so a compressed answer of a few KiB (a gzip or deflate bomb; brotli where its package is
installed) filled tens of MiB of the publisher's memory, a thousand times the bound, per request. Real local HTTP server
sending the bombs; the memory each request took measured with tracemalloc."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import pytest

from publishers import DeliveryError, HttpSettings
from publishers._http import Http
from tests.publishers.http_helpers import Answer, Clock, serve

DECODED = 16 << 20
"""What a bomb decodes to: 16 MiB of one byte, about 16 KiB sent."""
LIMIT = 1000
MOST_MEMORY = 4 << 20
"""Allocated at most while a request is answered (a network read, zlib's state, the room under LIMIT, httpx's own)."""


def bomb(encoding: str) -> bytes:
    plain = b"a" * DECODED
    if encoding == "gzip":
        return gzip.compress(plain, 9)
    if encoding == "deflate":
        return zlib.compress(plain, 9)
    return pytest.importorskip("brotli").compress(plain)  # type: ignore[no-any-return]


async def answered(encoding: str, status: int, whole_answer: bool) -> tuple[bytes | DeliveryError, int, dict[str, str]]:
    """The body read (or the try's failure), the most memory allocated meanwhile, the request's headers."""
    body, seen = bomb(encoding), {}

    def handle(path: str, headers: dict[str, str], sent: bytes) -> Answer:
        seen.update(headers)
        return status, {"Content-Encoding": encoding, "Content-Type": "text/plain"}, body

    with serve(handle) as url:
        http = Http(HttpSettings(max_answer_bytes=LIMIT), sleep=Clock().sleep)
        tracemalloc.start()
        try:
            result: bytes | DeliveryError = (await http.post(f"{url}/hook", b"{}", dict, whole_answer)).content
        except DeliveryError as exc:
            result = exc
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            await http.close()
    return result, peak, seen


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_answer_over_the_bound_fails_the_try_having_decoded_no_more_than_it(encoding: str) -> None:
    result, peak, headers = await answered(encoding, 200, whole_answer=True)
    assert isinstance(result, DeliveryError) and f"over max_answer_bytes={LIMIT}" in result.reason, result
    assert peak < MOST_MEMORY, f"{peak / 2**20:.1f} MiB for an answer bounded to {LIMIT} bytes"
    assert headers["Accept-Encoding"] == "gzip, deflate"


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_refusal_is_cut_at_the_bound_as_it_is_decoded(encoding: str) -> None:
    result, peak, _ = await answered(encoding, 400, whole_answer=False)
    assert result == b"a" * LIMIT
    assert peak < MOST_MEMORY, f"{peak / 2**20:.1f} MiB for an answer bounded to {LIMIT} bytes"


async def test_an_answer_in_an_encoding_not_asked_for_is_not_decoded() -> None:
    """A brotli bomb sent though the request did not ask for brotli: httpx decoded it whole, brotli being installed."""
    result, peak, _ = await answered("br", 200, whole_answer=True)
    assert isinstance(result, DeliveryError) and "an encoding not asked for (br)" in result.reason, result
    assert peak < MOST_MEMORY, f"{peak / 2**20:.1f} MiB for an answer bounded to {LIMIT} bytes"
