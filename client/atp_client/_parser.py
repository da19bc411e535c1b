"""atpctl's command line: every command and flag, checked as argparse reads them (``_args``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from atp_client import _args as arg
from atp_client._access import PERMISSIONS
from atp_client._import import EVENTS_BATCH
from atp_client._output import EXIT_HELP

DEFAULT_TARGET = "127.0.0.1:50051"


class _TargetGiven(argparse.Action):
    """``--target`` as given, noted (``target_given``): a refusal names the flag, else ``ATP_TARGET``, while the
    parsed ``target`` stays the one to dial, ``ATP_TARGET``'s or the default where no flag is given."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.target_given = True


class _StreamGiven(argparse.Action):
    """``--stream`` as given, noted (``stream_given``): ``events publish`` checks it against ATP_INPUT_STREAMS, while
    the parsed ``stream`` without the flag is the one to write to (``arg.default_input_stream``), as it was before the
    default was taken from ATP_INPUT_STREAMS: a caller of ``build_parser`` got None there."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.stream_given = True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="atpctl", description="Command-line client of the ATP service",
                                epilog=EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true",
                   help="answer in JSON (the default when stdout is not a terminal; a table otherwise)")
    p.add_argument("--target", action=_TargetGiven, default=os.environ.get("ATP_TARGET", DEFAULT_TARGET),
                   help=f"host:port of the service (env ATP_TARGET; default {DEFAULT_TARGET})")
    p.add_argument("--timeout", type=arg.seconds, default=10.0, help="deadline of each call in seconds (default 10)")
    p.add_argument("--retries", type=int, default=4, choices=range(5), metavar="{0..4}",
                   help="retries of a refused call (UNAVAILABLE, RESOURCE_EXHAUSTED, gRPC's CANCELLED) by gRPC, "
                        "with the service's retry policy, within --timeout; safe: calls carry their ids "
                        "(0: none; default 4)")
    p.add_argument("--token", default=os.environ.get("ATP_TOKEN"), help="bearer token (env ATP_TOKEN)")
    p.add_argument("--tls-ca", type=arg.readable, help="CA certificate (PEM) to verify the service: use TLS")
    p.add_argument("--tls-cert", type=arg.readable, help="client certificate (PEM) for mutual TLS, with --tls-key")
    p.add_argument("--tls-key", type=arg.readable, help="client key (PEM) for mutual TLS, with --tls-cert")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("availability", help="quantities of positions")
    a.add_argument("keys", nargs="+", type=arg.key, metavar="SKU@LOCATION")
    r = sub.add_parser("reserve", help="hold stock for an order")
    r.add_argument("reservation_id")
    r.add_argument("lines", nargs="+", type=arg.line, metavar="SKU@LOCATION:QTY")
    r.add_argument("--order-ref", default="")
    r.add_argument("--channel", default="")
    r.add_argument("--ttl", type=arg.ttl, default=0, help="seconds (0: service default)")
    r.add_argument("--allow-partial", action="store_true")
    for name, help_text in (("confirm", "held -> committed"), ("reservation", "show a reservation")):
        c = sub.add_parser(name, help=help_text)
        c.add_argument("reservation_id")
    for name, help_text in (("release", "cancel held or committed stock"), ("fulfil", "ship committed stock")):
        c = sub.add_parser(name, help=help_text, aliases=["fulfill"] if name == "fulfil" else [])
        c.add_argument("reservation_id")
        c.add_argument("lines", nargs="*", type=arg.line, metavar="SKU@LOCATION:QTY", help="none: everything")
        c.add_argument("--operation-id", default="", help="required with lines; makes a retry harmless")
    e = sub.add_parser("events", help="facts (POS/WMS)")
    esub = e.add_subparsers(dest="events_command", required=True)
    imp = esub.add_parser("import", help="send a JSONL file of facts through RecordEvents")
    imp.add_argument("file", type=arg.readable)
    imp.add_argument("--batch", type=arg.positive, default=EVENTS_BATCH,
                     help=f"facts per RecordEvents call (default {EVENTS_BATCH}; at most the service's "
                          "max_events_per_call); calls stay within 3 MiB whatever the facts")
    pub = esub.add_parser("publish", help="append a JSONL file of facts onto an input stream (as POS/WMS do)")
    pub.add_argument("file", type=arg.readable)
    pub.add_argument("--stream", type=arg.stream, action=_StreamGiven, default=arg.default_input_stream(),
                     help="input stream (default: the first of ATP_INPUT_STREAMS, as the service reads it; unset: "
                          f"{arg.DEFAULT_INPUT_STREAM}, and none on a Redis Cluster); where ATP_INPUT_STREAMS is set, "
                          "a stream not among them is refused: no intake reads it")
    pub.add_argument("--redis-url", default=os.environ.get("ATP_REDIS_URL"),
                     help="Redis the service reads (env ATP_REDIS_URL; default: the embedded service's, from "
                          "$ATP_DATA_DIR/redis/redis.url, var/redis/redis.url unset: make run's)")
    pub.add_argument("--redis-cluster", action=argparse.BooleanOptionalAction, default=None,  # None: the variable says
                     help="--redis-url names a node of a Redis Cluster (env ATP_REDIS_CLUSTER: true/false, 1/0, "
                          "yes/no, on/off, as the service's; --no-redis-cluster: one Redis, whatever it says)")
    st = sub.add_parser("stock", help="baseline stock from an ERP extract")
    stsub = st.add_subparsers(dest="stock_command", required=True)
    ld = stsub.add_parser("load", help="a CSV of sku,location,on_hand[,as_of] as COUNT facts; a re-load is a no-op")
    ld.add_argument("file", type=arg.readable)
    ld.add_argument("--source", default="erp", help="the facts' source (default erp)")
    ld.add_argument("--as-of", help="time of the extract for rows without as_of (RFC 3339 or epoch ms)")
    ld.add_argument("--report", type=Path, help="where rejected rows go, with their reason (default FILE.rejected.csv)")
    ld.add_argument("--batch", type=arg.positive, default=50_000, help="rows per LoadCounts call (default 50000)")
    ld.add_argument("--inflight", type=arg.positive, default=4, help="calls in flight (default 4)")
    x = sub.add_parser("explain", help="how a position's numbers came to be")
    x.add_argument("key", type=arg.key, metavar="SKU@LOCATION")
    ss = sub.add_parser("safety-stock", help="set the units protected at a position (Q4)")
    ss.add_argument("key", type=arg.key, metavar="SKU@LOCATION")
    ss.add_argument("quantity", type=arg.int64)
    w = sub.add_parser("watch", help="follow a channel's curated availability (one JSON line per update)")
    w.add_argument("channel")
    w.add_argument("--snapshot", action="store_true", help="every published value first")
    w.add_argument("--since", type=arg.version, default=0,
                   help="changes after this version (0: from now; not with --snapshot)")
    w.add_argument("--count", type=arg.count, default=0, help="stop after this many updates (0: follow forever)")
    sub.add_parser("reload-estate", help="re-read the estate/channel file (like SIGHUP)")
    t = sub.add_parser("token", help="caller tokens (no service needed)")
    tsub = t.add_subparsers(dest="token_command", required=True)
    tn = tsub.add_parser("new", help="make a token; print it once and the callers-file entry (its hash)")
    tn.add_argument("name", type=arg.name)
    tn.add_argument("--roles", required=True, help=f"comma-separated: {', '.join(PERMISSIONS)}")
    return p
