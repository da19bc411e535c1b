"""Why a connection failed at its handshake, where that can be told for sure: atpctl in plaintext against a
service serving TLS, or with ``--tls-ca`` against one serving plaintext. gRPC says only "the connection failed
(TRANSIENT_FAILURE)" for both, as for a service down. Asked only once a connection failed (nothing was sent), a
probe of its own opens one more TCP connection and hints only at what the service proved it speaks: a TLS
handshake it completed (or a TLS alert it sent), or the HTTP/2 SETTINGS frame that opens a plaintext server's
answer to the client preface. Anything else (refused, silent, closed, another protocol) gives no hint.
"""

from __future__ import annotations

import socket
import ssl

TLS_HINT = "the service serves TLS: give --tls-ca (the CA of its certificate)"
PLAINTEXT_HINT = "the service serves plaintext: leave out --tls-ca, --tls-cert and --tls-key"
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # and empty SETTINGS
_FRAME_HEADER = 9
_SETTINGS = 4
_TLS_ALERT = 0x15
"""The TLS record type of an alert: a plaintext HTTP/2 frame (a 3-byte length first) never starts so."""


def handshake_hint(target: str, tls: bool, timeout_s: float) -> str | None:
    """The flag to change, where the service at ``target`` (``host:port``, ``[v6]:port``) proves it speaks the
    other of TLS and plaintext than the client (``tls``); None where it does not, or cannot be told. Bounded by
    ``timeout_s`` for the connection and for each read."""
    address = _address(target)
    if address is None:
        return None
    try:
        if tls:
            return PLAINTEXT_HINT if _answers_plaintext_http2(address, timeout_s) else None
        return TLS_HINT if _answers_tls(address, timeout_s) else None
    except OSError:  # refused, reset, silent past the bound: nothing proved
        return None


def _address(target: str) -> tuple[str, int] | None:
    """(host, port) of a plain ``host:port`` or ``[v6]:port``; None for any other form (a scheme, no port)."""
    if "/" in target:
        return None
    host, sep, port = target.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None
    return (host, int(port)) if sep and host and port.isdigit() else None


def _answers_tls(address: tuple[str, int], timeout_s: float) -> bool:
    """Whether the service completes a TLS handshake (its certificate not checked: only whether it speaks TLS),
    or refuses one with a TLS alert (a client certificate asked for, say)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(address, timeout=timeout_s) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=address[0]):
                return True
        except ssl.SSLError as exc:  # an alert is TLS's own word; a record that is none ("wrong version") is not
            return "ALERT" in str(exc.reason or "")


def _answers_plaintext_http2(address: tuple[str, int], timeout_s: float) -> bool:
    """Whether the service answers the HTTP/2 client preface with a SETTINGS frame on stream 0, as a plaintext
    HTTP/2 server's first frame is; a TLS server answers bytes that are no ClientHello with an alert, or closes."""
    with socket.create_connection(address, timeout=timeout_s) as conn:
        conn.sendall(_H2_PREFACE)
        head = b""
        while len(head) < _FRAME_HEADER and (more := conn.recv(_FRAME_HEADER - len(head))):
            head += more
    return (len(head) == _FRAME_HEADER and head[0] != _TLS_ALERT and head[3] == _SETTINGS
            and head[5:9] == b"\x00\x00\x00\x00")
