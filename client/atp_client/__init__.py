"""The client of the ATP inventory service's gRPC API (``atp.v1.AvailabilityService``).

- ``AtpClient``: a typed async client over grpc.aio, with the service's retry policy;
- ``reconnect_options``: the bounded wait between connection attempts ``AtpClient`` has, for any gRPC channel;
- ``KeptStatus``, ``lost_in_core``, ``release``: for a stream call made on a raw stub, what ``AtpClient.reserve_stream``
  does where grpcio set its own ``INTERNAL`` "Internal error from Core" (the service's status told, the call ended);
- ``RoutedClient``: calls sent to the service process owning their shard group (``place``,
  ``home_group``, ``Routes``, the metadata keys of redirects and forwarding);
- ``pb``: the generated messages and stubs (``atp_client.pb.atp.v1.atp_pb2``);
- roles and tokens (``PERMISSIONS``, ``new_token``, ``token_hash``), as the API defines them;
- ``atpctl`` (``atp_client.ctl``), the command line.

Nothing here needs the server: this distribution installs with gRPC and protobuf alone.
"""

from ._access import PERMISSIONS, READ, new_token, token_hash
from ._channel import RECONNECT_MAX_S, reconnect_options
from ._client import RETRYABLE, AtpClient, RetryPolicy, tls_credentials
from ._core_status import KeptStatus, lost_in_core, release
from ._errors import (
    AccessDenied,
    AtpError,
    Conflict,
    FieldViolation,
    InvalidRequest,
    NotFound,
    Refusal,
    Retryable,
    typed,
)
from ._routed import RoutedClient
from ._routing import (
    FORWARDED_KEY,
    MAX_GROUPS,
    MOVED_KEY,
    PLACEMENT,
    REDIRECT,
    ROUTING_KEY,
    Routes,
    home_group,
    parse_moved,
    place,
)
from ._stream import ACCEPTED_KEY, accepted
from ._time import duration, epoch_ms, timestamp

__all__ = [
    "ACCEPTED_KEY",
    "FORWARDED_KEY",
    "MAX_GROUPS",
    "MOVED_KEY",
    "PERMISSIONS",
    "PLACEMENT",
    "READ",
    "RECONNECT_MAX_S",
    "REDIRECT",
    "RETRYABLE",
    "ROUTING_KEY",
    "AccessDenied",
    "AtpClient",
    "AtpError",
    "Conflict",
    "FieldViolation",
    "InvalidRequest",
    "KeptStatus",
    "NotFound",
    "Refusal",
    "RetryPolicy",
    "Retryable",
    "RoutedClient",
    "Routes",
    "accepted",
    "duration",
    "epoch_ms",
    "home_group",
    "lost_in_core",
    "new_token",
    "parse_moved",
    "place",
    "reconnect_options",
    "release",
    "timestamp",
    "tls_credentials",
    "token_hash",
    "typed",
]
