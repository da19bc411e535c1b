"""Ports for the servers a test starts itself, held from the pick until the test ends."""

from __future__ import annotations

import socket

HELD: list[socket.socket] = []
"""The holders of this test's ports (``held_port``): closed after it (``release_ports``)."""


def held_port(host: str = "127.0.0.1") -> int:
    """A free port on ``host``, kept from every other process until the test ends: bound here with
    SO_REUSEADDR, never listening. ``free_port`` lets it go at once, and between the pick and a server's
    bind another xdist worker's pick, or an outgoing connection's own end, could take it: that server's
    start then failed "address in use", or a call meant for a port nobody serves reached another's. While
    held, no socket bound to port 0 is handed it and no ``connect`` takes it as its own end, yet a server
    that sets SO_REUSEADDR too — gRPC's, redis-server's, asyncio's, http.server's — binds it and listens
    (Linux socket(7): such a socket may bind "except when there is an active listening socket bound to
    the address"), however often it restarts there; a connection to it while none listens is refused,
    as where nothing runs."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind((host, 0))
    HELD.append(holder)
    return int(holder.getsockname()[1])


def release_ports() -> None:
    while HELD:
        HELD.pop().close()
