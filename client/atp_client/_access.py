"""Who may call what, as the API defines it: caller roles and bearer tokens.

A caller sends ``authorization: Bearer <token>``; the service knows only the SHA-256 of each token
(its callers file) and the caller's roles. Roles are part of the API contract: ``oms`` (reserve,
confirm, release, fulfil and reads), ``ingest`` (RecordEvents, LoadCounts), ``channel`` (WatchAvailability and
reads), ``admin`` (safety stock, estate reload and reads), ``peer`` (order steps between the service
processes of one keyspace, and the facts one reads from the input streams for groups another owns).
"""

from __future__ import annotations

import hashlib
import secrets

READ = frozenset({"GetReservation", "GetAvailability", "ExplainAvailability", "GetRouting"})
"""The read-only RPCs: the roles that read (oms, channel, admin) may call them; ingest and peer may not."""

PERMISSIONS: dict[str, frozenset[str]] = {
    "oms": frozenset({"Reserve", "Confirm", "Release", "Fulfill", "ReserveStream"}) | READ,
    "ingest": frozenset({"RecordEvents", "LoadCounts"}),
    "channel": frozenset({"WatchAvailability"}) | READ,
    "admin": frozenset({"SetSafetyStock", "ReloadEstate"}) | READ,
    "peer": frozenset({"Step", "RecordEvents"}),
}
"""Each role's RPCs (by method name)."""


def token_hash(token: str) -> str:
    """What a callers file holds for ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh bearer token (256 random bits, URL-safe), never beginning with ``-``: one in 64 did, and
    a command line took it for an option (``atpctl --token -x…``, locust's ``--token``: "expected one
    argument")."""
    while True:
        token = secrets.token_urlsafe(32)
        if not token.startswith("-"):
            return token
