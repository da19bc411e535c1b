"""A call for a shard group another service process owns: forwarded to the owner, or redirected.

The engine refuses such a call ``Moved`` before any work. A caller that routes by itself
(``atp-routing: redirect``) is told where to go: the ``GROUP_MOVED`` refusal with ``atp-moved``
(``errors.trailers_of``). So is a call already forwarded once (``atp-forwarded``: never a loop), a
call for a group no process owns now, and a call of a method not forwarded (its request may need
several groups). Any other call is sent on to the owner as it came — the same request message,
the caller's token, the caller's remaining deadline — and the owner's answer, or refusal with its
trailing metadata, is the caller's answer.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn, cast

import grpc
from google.protobuf.message_factory import GetMessageClass

from atp_client import FORWARDED_KEY, REDIRECT, ROUTING_KEY
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service.metrics import EdgeMetrics
from reservation import Moved

SERVICE = pb.DESCRIPTOR.services_by_name["AvailabilityService"]
FORWARDED_METHODS = frozenset({"Reserve", "Confirm", "Release", "Fulfill", "GetReservation", "SetSafetyStock",
                               "ExplainAvailability"})
"""The unary calls that need one group (a reservation's home, a SKU's): the owner answers them whole."""
MAX_PEERS = 64
"""Channels kept open to peer processes; past it the least recently used one is closed."""
PEER_CLOSE_GRACE_S = 5.0
"""A channel dropped from the pool (or at stop) lets the calls on it finish this long."""
_ANSWERS = {m.name: GetMessageClass(m.output_type).FromString for m in SERVICE.methods}
_PASSED = frozenset({"authorization"})
"""The caller's metadata a forwarded call carries."""
_OPTIONS = [
    ("grpc.enable_retries", 0),  # one try: the caller retries, with its own policy and deadline
    ("grpc.max_receive_message_length", -1),  # the owner applies its own limits
    ("grpc.max_send_message_length", -1),
]


class Relayed(Exception):
    """The owner refused a forwarded call: the caller is answered the same status, message and
    trailing metadata (status details, retry pushback, ``atp-moved``)."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, Any], ...]) -> None:
        super().__init__(details)
        self.code, self.details, self.trailers = code, details, trailers

    @classmethod
    def of(cls, error: grpc.aio.AioRpcError) -> Relayed:
        received = cast(Iterable[tuple[str, Any]], error.trailing_metadata() or ())
        trailers = tuple((key, value) for key, value in received
                         if not key.startswith(":") and key not in ("grpc-status", "grpc-message"))
        return cls(error.code(), error.details() or "", trailers)

    async def abort(self, context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
        await context.abort(self.code, self.details, self.trailers)
        raise AssertionError("unreachable: grpc.aio's abort raises")


class Forwarder:
    """Sends calls on to their group's owner over one pooled channel per peer address.

    ``tls_root``: the PEM root certificate peers are verified with (the service runs TLS); None:
    plaintext. ``tls_identity``: (private key, certificate chain) presented to peers that require
    client certificates (mutual TLS)."""

    def __init__(self, metrics: EdgeMetrics, tls_root: bytes | None = None,
                 tls_identity: tuple[bytes, bytes] | None = None, max_peers: int = MAX_PEERS) -> None:
        self.address = ""
        """This process's advertised address: what a forwarded call's ``atp-forwarded`` names."""
        self._counted = metrics.forwarded
        self._credentials = None if tls_root is None else grpc.ssl_channel_credentials(
            root_certificates=tls_root, private_key=tls_identity[0] if tls_identity else None,
            certificate_chain=tls_identity[1] if tls_identity else None)
        self._max_peers = max_peers
        self._peers: OrderedDict[str, grpc.aio.Channel] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    async def answer(self, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any],
                     moved: Moved) -> Any:
        """The owner's answer to the call; raises ``moved`` to redirect the caller, ``Relayed`` to
        pass the owner's refusal on."""
        metadata = tuple(context.invocation_metadata() or ())
        if not self._forwards(method, moved, metadata):
            self._counted.labels(method, "redirected").inc()
            raise moved
        passed = (*((k, v) for k, v in metadata if k in _PASSED), (FORWARDED_KEY, self.address))
        call = self._peer(moved.owner).unary_unary(f"/{SERVICE.full_name}/{method}", _serialized, _ANSWERS[method])
        try:
            answer = await call(request, timeout=context.time_remaining(), metadata=passed)
        except grpc.aio.AioRpcError as exc:
            self._counted.labels(method, "error").inc()
            raise Relayed.of(exc) from None
        self._counted.labels(method, "ok").inc()
        return answer

    def _forwards(self, method: str, moved: Moved, metadata: Sequence[tuple[str, Any]]) -> bool:
        if method not in FORWARDED_METHODS or not moved.owner or moved.owner == self.address:
            return False
        return not any(k == FORWARDED_KEY or (k == ROUTING_KEY and v == REDIRECT) for k, v in metadata)

    def _peer(self, address: str) -> grpc.aio.Channel:
        channel = self._peers.get(address)
        if channel is None:
            channel = self._peers[address] = (
                grpc.aio.secure_channel(address, self._credentials, options=_OPTIONS) if self._credentials
                else grpc.aio.insecure_channel(address, options=_OPTIONS))
            if len(self._peers) > self._max_peers:
                dropped = asyncio.ensure_future(self._peers.popitem(last=False)[1].close(PEER_CLOSE_GRACE_S))
                self._closing.add(dropped)
                dropped.add_done_callback(self._closing.discard)
        self._peers.move_to_end(address)
        return channel

    @property
    def peers(self) -> list[str]:
        """The addresses a channel is open to, least recently used first."""
        return list(self._peers)

    async def aclose(self, grace_s: float = PEER_CLOSE_GRACE_S) -> None:
        """Close every peer channel (the service's stop, once gRPC has stopped: no call is being
        forwarded any more, so nothing waits out the grace)."""
        channels = list(self._peers.values())
        self._peers.clear()
        await asyncio.gather(*(channel.close(grace_s) for channel in channels), *self._closing)


def _serialized(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data
