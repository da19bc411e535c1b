"""``atpctl``'s argument types: each value checked to fit the field of the request it fills, before
anything is sent; else a usage error (exit 2) naming the argument."""

from __future__ import annotations

import argparse
import math
import os
import re
import ssl
from pathlib import Path

from atp_client._time import MAX_TIMEOUT_S

INT64_MAX = (1 << 63) - 1
"""What a proto int64 holds (quantities): a number past it cannot even be put in the request."""
MAX_DURATION_S = 315_576_000_000
"""The largest google.protobuf.Duration (about 10,000 years), in seconds."""


TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
"""A boolean variable's values, as the service reads its own (``atp_service.config_values``)."""


def env_boolean(variable: str, given: bool | None) -> bool:
    """A flag given (``given``), else ``variable`` read as the service reads it: one the service takes (``on``)
    taken alike, and a value it refuses (``maybe``, or set empty) refused naming the variable, never taken as false."""
    if given is not None:
        return given
    if variable not in os.environ:
        return False
    raw = os.environ[variable].lower()
    if raw not in (*TRUE, *FALSE):
        raise ValueError(f"{variable}: cannot read {os.environ[variable]!r} as a boolean (one of "
                         f"{', '.join(TRUE + FALSE)})")
    return raw in TRUE


def key(text: str) -> tuple[str, str]:
    sku, sep, location = text.partition("@")
    if not sep or not sku or not location:
        raise argparse.ArgumentTypeError(f"expected SKU@LOCATION, got {text!r}")
    if "@" in location:  # split at the first, another position was asked (or made: a safety stock, a hold)
        raise argparse.ArgumentTypeError(f"expected SKU@LOCATION with one '@', got {text!r}: which '@' ends the SKU "
                                         "is not known (a SKU or location holding '@' is named through the API)")
    return sku, location


def name(text: str) -> str:
    """A caller's name in the callers file, which refuses an empty one (the whole file with it)."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty: the callers file refuses an entry without a name")
    return text


def stream(text: str) -> str:
    """An input stream's key: "" is a key Redis takes and no intake reads (the facts lost, exit 0)."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty: name the input stream the service reads")
    return text


DEFAULT_INPUT_STREAM = "atp:in:pos"
"""The service's first input stream while ATP_INPUT_STREAMS is unset (``ServiceConfig.input_streams``)."""


def _input_streams(raw: str) -> tuple[str, ...]:
    """ATP_INPUT_STREAMS's streams as the service reads them: comma-separated, each stripped, empty ones dropped."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def default_input_stream() -> str:
    """``events publish``'s ``--stream`` where no flag is given, as ``build_parser`` parses it: the first of
    ATP_INPUT_STREAMS read as the service reads it, else ``atp:in:pos`` (``input_stream`` refuses it where no intake
    would read it: on a Redis Cluster with the variable unset, or the variable set empty)."""
    read = _input_streams(os.environ.get("ATP_INPUT_STREAMS", ""))
    return read[0] if read else DEFAULT_INPUT_STREAM


def input_stream(given: str | None, cluster: bool) -> str:
    """The stream ``events publish`` writes to: ``--stream`` (``given``), else the first of ATP_INPUT_STREAMS read as
    the service reads it (comma-separated, each name stripped, empty ones dropped), else ``atp:in:pos`` — but not on
    a Redis Cluster (``cluster``), where the service refuses its default streams (they share no hash tag). Where
    ATP_INPUT_STREAMS is set, a stream not among them is refused (``ValueError``): no intake reads it. The default
    was ``atp:in:pos`` whatever the variable said: with streams renamed (``atp:{in}:pos`` on a cluster) the facts went
    to a stream nobody reads, exit 0."""
    if "ATP_INPUT_STREAMS" not in os.environ:  # the service's streams are not known here: as told
        if given is None and cluster:
            raise ValueError("on a Redis Cluster the service's input streams share a hash tag (as atp:{in}:pos), so "
                             f"{DEFAULT_INPUT_STREAM} is none of them: name --stream, or set ATP_INPUT_STREAMS as the "
                             "service's; else no intake would read the facts")
        return given or DEFAULT_INPUT_STREAM
    read = _input_streams(os.environ["ATP_INPUT_STREAMS"])
    if given is None and read:
        return read[0]
    if given in read:
        return given
    said = f"{given!r} is not one of ATP_INPUT_STREAMS ({', '.join(read)})" if read and given is not None else (
        "ATP_INPUT_STREAMS is empty: the service reads no input stream (ingestion off)")
    raise ValueError(f"{said}: no intake would read the facts")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def within(text: str, low: int, high: int) -> int:
    """An integer in [low, high]: one the request's field can carry (the service judges the rest)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be within [{low}, {high}], got {value}")
    return value


def int64(text: str) -> int:
    return within(text, -INT64_MAX - 1, INT64_MAX)


def ttl(text: str) -> int:
    return within(text, -MAX_DURATION_S, MAX_DURATION_S)


def version(text: str) -> int:
    return within(text, 0, (1 << 64) - 1)


def count(text: str) -> int:
    return within(text, 0, INT64_MAX)


def seconds(text: str) -> float:
    """A deadline: a number of seconds above 0, at most ``MAX_TIMEOUT_S`` (0 or less, or one gRPC's clock cannot
    hold, would fail every call DEADLINE_EXCEEDED, unsent, which reads as "unavailable, retry later")."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0 and at most {MAX_TIMEOUT_S:g}, "
                                         f"got {text!r}")
    return value


def readable(text: str) -> Path:
    """A file that can be read: checked before anything is sent."""
    path = Path(text)
    try:
        path.open("rb").close()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {text!r}: {exc.strerror or exc}") from None
    return path


def contents(path: Path | None) -> bytes | None:
    """The bytes of a file given (None: not given)."""
    return path.read_bytes() if path else None


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def tls_problem(ca: Path | None, cert: Path | None, key: Path | None) -> tuple[str, str] | None:
    """(argument, why) of the first TLS file gRPC cannot use: no PEM certificate in ``ca`` or ``cert``, a ``key``
    that is not ``cert``'s (none, encrypted, another's); None: all fit. gRPC took such a file, logged errors naming
    no argument, and every call failed UNAVAILABLE (exit 6, "retry later") for a file no retry fixes."""
    for argument, path in (("--tls-ca", ca), ("--tls-cert", cert)):
        if path is None:
            continue
        blocks = _PEM_CERTIFICATE.findall(path.read_bytes())
        try:
            if not blocks:
                raise ValueError("no -----BEGIN CERTIFICATE----- block")
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=b"\n".join(blocks).decode("ascii"))
        except (ssl.SSLError, ValueError) as exc:
            return argument, f"{str(path)!r} holds no PEM certificate gRPC can read: {exc}"
    if cert is not None and key is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=_no_password)
        except (ssl.SSLError, OSError, ValueError) as exc:
            return "--tls-key", f"{str(key)!r} is no unencrypted PEM key of --tls-cert's certificate: {exc}"
    return None


def _no_password() -> bytes:
    return b""  # gRPC reads no encrypted key: one is refused here, never prompted for


def cleared(report: Path) -> str | None:
    """Why ``report`` (where ``stock load`` writes the rows it could not apply) cannot be written (None: it can),
    an earlier run's removed (it must not pass for this one's). Found before any row is sent: found at the first
    rejected row, the calls before it were loaded, the load ended in a traceback and the report was lost."""
    try:
        report.unlink(missing_ok=True)
        report.open("w").close()  # made and removed: written at the first rejected row only
        report.unlink()
    except OSError as exc:
        return f"cannot write {str(report)!r}: {exc.strerror or exc}"
    return None


_URL_SCHEMES = ("http://", "https://", "grpc://", "grpcs://")
"""A URL's scheme, which no gRPC target has: gRPC read ``http://host:port`` as a host named ``http`` and failed
every call UNAVAILABLE (exit 6, "retry later": a script retried a typo for ever)."""
_NAMED_AS_IS = frozenset({"unix", "unix-abstract", "vsock", "xds", "google-c2p"})
"""gRPC's schemes whose address is theirs to read: passed as given."""


def target(text: str) -> str:
    """Where the service is, in a form gRPC takes (``host[:port]``, ``[v6]:port``, ``dns:[//auth/]host[:port]``,
    ``ipv4:``/``ipv6:`` ``addr:port,...``, ``unix:path``, ...). Only what is surely wrong is refused: no host, a port
    that is no number in 1..65535, a URL scheme, a space; each was a call that could never connect, exit 6."""
    if not text or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}")
    if text.lower().startswith(_URL_SCHEMES):
        raise argparse.ArgumentTypeError(f"expected host:port, got {text!r}: a gRPC target takes no URL scheme "
                                         "(TLS is --tls-ca's)")
    scheme, _, rest = text.partition(":")
    scheme = scheme.lower() if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme) else ""
    if scheme in _NAMED_AS_IS:
        if not rest.strip("/"):
            raise argparse.ArgumentTypeError(f"{text!r}: no address after {scheme}:")
        return text
    if scheme in ("ipv4", "ipv6"):  # a list of addresses, each with its port
        for address in rest.split(","):
            _host_port(text, address, port_required=True)
    elif scheme == "dns":  # dns:host, dns:///host, dns://server/host
        _host_port(text, rest[2:].partition("/")[2] if rest.startswith("//") else rest, port_required=False)
    else:  # gRPC reads any other text as dns:///text
        _host_port(text, text, port_required=False)
    return text


def target_problem(text: str) -> str | None:
    """Why ``target`` refuses ``text`` (None: it does not). Checked for the commands that dial only: ``token new``
    and ``events publish`` run whatever ATP_TARGET holds."""
    try:
        target(text)
    except argparse.ArgumentTypeError as exc:
        return str(exc)
    return None


def _host_port(text: str, address: str, port_required: bool) -> None:
    """Refuses ``address`` without a host, or with a port that is no number in 1..65535, as gRPC splits it:
    ``[host]:port``; ``host:port`` with one colon; else all host (an IPv6 address without brackets)."""
    if address.startswith("["):
        host, closed, after = address[1:].partition("]")
        if not closed or (after and not after.startswith(":")):
            raise argparse.ArgumentTypeError(f"{text!r}: expected [IPv6 address]:port")
        port: str | None = after[1:] if after else None
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:
        host, port = address, None
    if not host:
        raise argparse.ArgumentTypeError(f"{text!r}: no host")
    if port is None and port_required:
        raise argparse.ArgumentTypeError(f"{text!r}: {address!r} has no port")
    if port is not None and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be a number in 1..65535, got {port!r}")


def line(text: str) -> tuple[str, str, int]:
    position, sep, qty = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected SKU@LOCATION:QTY, got {text!r}")
    sku, location = key(position)
    try:
        return sku, location, int64(qty)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"quantity of {text!r}: {exc}") from None
