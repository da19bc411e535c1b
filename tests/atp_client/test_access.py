"""Tokens as ``atpctl token new`` makes them."""

from __future__ import annotations

import argparse
import secrets

import pytest

from atp_client import new_token


def test_a_new_token_never_begins_with_a_dash_so_a_command_line_takes_it_as_a_value(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``secrets.token_urlsafe`` begins with ``-`` once in 64 draws; such a token given as
    ``--token <value>`` was refused by argparse ("expected one argument")."""
    drawn = iter(["-leading-dash", "plain-token"])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda _n: next(drawn))
    token = new_token()
    assert token == "plain-token"
    parser = argparse.ArgumentParser()
    parser.add_argument("--token")
    assert parser.parse_args(["--token", token]).token == token


def test_new_tokens_keep_their_strength() -> None:
    tokens = {new_token() for _ in range(2_000)}
    assert len(tokens) == 2_000
    assert all(len(t) == 43 and not t.startswith("-") for t in tokens)
