"""A Shopify access token no request header can carry is refused at start, and never said (OPERATIONS.md: the
publishers' secrets are never logged)."""

from __future__ import annotations

import pytest

from publishers.cli import build_parser, make_adapter

SECRET_PART = "0123456789abcdef"


@pytest.mark.parametrize("token", [f"shpat_{SECRET_PART}\n", f"shpat_{SECRET_PART} ", f" shpat_{SECRET_PART}",
                                   f"shpat_{SECRET_PART}\r\nX-Other: 1", f"shpat_{SECRET_PART}\u00e9"])
def test_a_token_no_request_header_carries_is_refused_at_start_without_saying_it(
        monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    """A token with a newline left from the file it was read from passed: each request was refused by HTTP itself
    ('LocalProtocolError: Illegal header value b'shpat_...\\n''), a retryable failure whose reason, the token in it,
    went into every dead letter and publisher_dead_lettered line while it was retried for ever; a non-ASCII one
    raised UnicodeEncodeError out of the adapter, ending the publisher."""
    monkeypatch.setenv("ATP_SHOPIFY_TOKEN", token)
    args = build_parser().parse_args(["--channel", "web", "--adapter", "shopify", "--url", "https://shop.myshopify.com"])
    with pytest.raises(ValueError) as refused:
        make_adapter(args)
    said = str(refused.value)
    assert said.startswith("ATP_SHOPIFY_TOKEN: holds whitespace") and SECRET_PART not in said
