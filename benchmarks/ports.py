"""Ports for the servers a benchmark starts, held from the pick until the benchmark's process ends."""

from __future__ import annotations

import socket

_HELD: list[socket.socket] = []
"""The holders of the ports picked (``held_port``): closed as the process exits."""


def held_port(host: str = "127.0.0.1") -> int:
    """A free port on ``host``, kept from every other process's pick while this one runs: bound here with
    SO_REUSEADDR, never listening. ``free_port`` lets it go at once, and between the pick and a server's bind an
    outgoing connection's own end, or another process's pick (a test run's other workers), could take it: the
    server's start then failed "address in use". A server that sets SO_REUSEADDR too — gRPC's, redis-server's,
    http.server's — still binds it and listens (Linux socket(7); ``tests/ports.py`` holds the tests' ports alike)."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind((host, 0))
    _HELD.append(holder)
    return int(holder.getsockname()[1])
