"""``atpctl``: operate an ATP service from a shell. Prints JSON (a table on a terminal); a refusal exits
with a status per class of gRPC status (``_output.EXIT_HELP``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from atp_client import _args as arg
from atp_client._access import PERMISSIONS, new_token, token_hash
from atp_client._client import AtpClient, RetryPolicy, tls_credentials
from atp_client._import import EVENTS_BATCH, Imported, count_facts, numbered_facts, send_all
from atp_client._output import (
    CHANGES,
    EXIT_BROKEN_PIPE,
    EXIT_HELP,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_RESNAPSHOT,
    EXIT_USAGE,
    IN_DOUBT_LINE,
    INTERRUPTED_CHANGE,
    BadInput,
    emit,
    in_doubt_after,
    plain,
    refusal,
)
from atp_client.pb.atp.v1 import atp_pb2 as pb

EVENTS_CHUNK = 1000


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="atpctl", description="Command-line client of the ATP service",
                                epilog=EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true",
                   help="answer in JSON (the default when stdout is not a terminal; a table otherwise)")
    p.add_argument("--target", default=os.environ.get("ATP_TARGET", "127.0.0.1:50051"),
                   help="host:port of the service (env ATP_TARGET)")
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
    pub.add_argument("--stream", type=arg.stream, default="atp:in:pos", help="input stream (default atp:in:pos)")
    pub.add_argument("--redis-url", default=os.environ.get("ATP_REDIS_URL"),
                     help="Redis the service reads (env ATP_REDIS_URL; default: var/redis/redis.url, make run's)")
    pub.add_argument("--redis-cluster", action="store_true",
                     default=os.environ.get("ATP_REDIS_CLUSTER", "").lower() in ("1", "true", "yes"),
                     help="--redis-url names a node of a Redis Cluster (env ATP_REDIS_CLUSTER)")
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


def _new_token(name: str, roles: str) -> int:
    wanted = [r.strip() for r in roles.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in PERMISSIONS]
    if not wanted or unknown:
        print(f"atpctl: --roles: unknown {unknown or 'none given'}; choose from {', '.join(PERMISSIONS)}",
              file=sys.stderr)
        return 2
    token = new_token()
    print(f"# token for {name} (shown once; give it to the caller, keep it out of files and logs):", file=sys.stderr)
    print(token, file=sys.stderr)
    entry = f'[[callers]]\nname = {_toml_string(name)}\nroles = {json.dumps(wanted)}'
    print(f'{entry}\ntoken_sha256 = "{token_hash(token)}"')
    return 0


def _toml_string(text: str) -> str:
    """``text`` as one TOML basic string: a quote or a new line in a name must not end the string and
    write keys (roles, another caller) of its own. JSON's escapes are TOML's; TOML also wants DEL
    escaped, and astral characters raw (ensure_ascii would write surrogate pairs, which TOML refuses)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _client(args: argparse.Namespace) -> AtpClient:
    credentials = None
    if args.tls_ca or args.tls_cert:
        credentials = tls_credentials(*(arg.contents(path) for path in (args.tls_ca, args.tls_cert, args.tls_key)))
    retry = RetryPolicy(attempts=args.retries + 1) if args.retries > 0 else None
    return AtpClient(args.target, timeout_s=args.timeout, token=args.token, credentials=credentials, retry=retry)


def _dump(args: argparse.Namespace, msg: Message | Sequence[Message] | dict[str, Any]) -> None:
    """The answer: a table on a terminal, JSON with --json or when stdout is not a terminal."""
    if isinstance(msg, Sequence):
        data: Any = [plain(m) for m in msg]
    elif isinstance(msg, Message):
        data = plain(msg)
    else:
        data = msg
    emit(data, args.json or not sys.stdout.isatty())


async def _run(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        cmd = args.command
        if cmd not in ("events", "stock"):  # refused: nothing sent, said so (R7); bulk commands connect per call
            await client.connect()
        if cmd == "availability":
            _dump(args, await client.availability(args.keys))
        elif cmd == "reserve":
            _dump(args, await client.reserve(args.reservation_id, args.lines, order_ref=args.order_ref,
                                       channel=args.channel, ttl_seconds=args.ttl, allow_partial=args.allow_partial))
        elif cmd == "confirm":
            _dump(args, await client.confirm(args.reservation_id))
        elif cmd == "reservation":
            _dump(args, await client.get_reservation(args.reservation_id))
        elif cmd == "release":
            _dump(args, await client.release(args.reservation_id, args.lines, args.operation_id))
        elif cmd in ("fulfil", "fulfill"):
            _dump(args, await client.fulfill(args.reservation_id, args.lines, args.operation_id))
        elif cmd == "explain":
            sku, location = args.key
            _dump(args, await client.stub.ExplainAvailability(pb.ExplainAvailabilityRequest(sku=sku, location=location),
                                                        timeout=client.timeout_s))
        elif cmd == "safety-stock":
            sku, location = args.key
            _dump(args, await client.stub.SetSafetyStock(
                pb.SetSafetyStockRequest(sku=sku, location=location, quantity=args.quantity), timeout=client.timeout_s))
        elif cmd == "events" and args.events_command == "import":
            return await _import(args, client, args.file)
        elif cmd == "reload-estate":
            _dump(args, await client.stub.ReloadEstate(pb.ReloadEstateRequest(), timeout=client.timeout_s))
        elif cmd == "watch":
            return await _watch(client, args)
        elif cmd == "stock":
            return await _stock_load(args, client)
    return EXIT_OK


async def _stock_load(args: argparse.Namespace, client: AtpClient) -> int:
    """Exit status 3 when any row was rejected (they are in the report); the rest is loaded. A call
    refused for good ends the load with that refusal's status, after the summary and report of
    what was answered until then."""
    try:
        from atp_client._stock import HeaderError, LoadStopped, load, parse_time, progress_stream
    except ImportError as exc:  # numpy is an extra: the API client does not need it
        raise SystemExit(f"atpctl stock load: {exc.name} is missing: pip install 'atp-client[bulk]'") from None
    try:
        as_of = parse_time(args.as_of) if args.as_of else None
    except ValueError as exc:  # a bad command line, as argparse says it
        print(f"atpctl: error: argument --as-of: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report = args.report or args.file.with_name(args.file.name + ".rejected.csv")
    if (unwritable := arg.cleared(report)) is not None:  # found now, not at the first rejected row, rows loaded
        print(f"atpctl: error: argument --report: {unwritable}", file=sys.stderr)
        return EXIT_USAGE
    stopped: int | None = None
    try:
        summary = await load(client, args.file, args.source, as_of, args.batch, args.inflight, progress_stream(),
                             report)
    except HeaderError as exc:
        raise BadInput(f"{args.file}: {exc}") from None
    except LoadStopped as cut:
        summary = cut.summary
        stopped, line = refusal(cut.error) if cut.error else (EXIT_INTERRUPTED, "atpctl: interrupted")
        print(f"{line}\natpctl: the load stopped: {summary.not_answered} rows were not answered (loaded or not); "
              "run the same load again: a re-load applies nothing twice (E8)", file=sys.stderr)
    if summary.rejected:
        print(f"atpctl: {len(summary.rejected)} rows not applied, see {report}", file=sys.stderr)
    _dump(args, summary.as_dict())
    if stopped is not None:
        return stopped
    return EXIT_INVALID if summary.rejected else EXIT_OK


async def _watch(client: AtpClient, args: argparse.Namespace) -> int:
    """No deadline: a watch runs until the count is reached or it is interrupted (``AtpClient.watch``: a
    service gone silent ends it ``Retryable``, exit 6). One JSON line per update, whatever the output (a
    watch is read by programs)."""
    seen = 0
    watch = client.watch(args.channel, snapshot=args.snapshot, since_version=args.since)
    async with contextlib.aclosing(watch) as messages:  # the call ended however the loop is left
        async for message in messages:
            kind = pb.WatchAvailabilityResponse.Kind.Name(message.kind)
            if message.kind == pb.WatchAvailabilityResponse.KIND_RESNAPSHOT_REQUIRED:
                print(json.dumps({"kind": kind, "version": message.version}), flush=True)
                return EXIT_RESNAPSHOT
            if message.kind == pb.WatchAvailabilityResponse.KIND_SNAPSHOT_END:
                print(json.dumps({"kind": kind, "version": message.version}), flush=True)
            for u in message.updates:
                print(json.dumps({"kind": kind, **plain(u)}), flush=True)
                seen += 1
                if args.count and seen >= args.count:
                    return EXIT_OK
    return EXIT_OK


async def _import(args: argparse.Namespace, client: AtpClient, path: Path) -> int:
    """Facts from a JSONL file, ``--batch`` a call, once every line of it reads as a fact; the
    counts per outcome (so far, if a call is refused for good). Exit status 3 when any fact was not
    applied (invalid, quarantined): an import is judged by its worst line."""
    total = count_facts(path)

    def tell(result: pb.FactResult) -> None:
        name = pb.FactOutcome.Name(result.outcome)
        if result.HasField("error"):
            print(f"{result.event_id}: {name}: {result.error.message}", file=sys.stderr)
        elif result.detail:
            print(f"{result.event_id}: {name}: {result.detail}", file=sys.stderr)

    done = await send_all(client, numbered_facts(path), total, args.batch, tell)
    stopped = _stopped(path, done) if done.stopped_lines else None
    _dump(args, done.summary())
    return _judged(done.counts) if stopped is None else stopped


def _stopped(path: Path, done: Imported) -> int:
    """Says which lines a run stopped at, what became of them and that a re-run is safe; its status."""
    assert done.stopped_lines is not None
    first, last = done.stopped_lines
    status, line = refusal(done.error) if done.error else (EXIT_INTERRUPTED, "atpctl: interrupted")
    fate = ("in doubt (applied or not)" if done.in_doubt
            else "not applied (not sent)" if done.unsent else "not applied")
    print(f"{line}\natpctl: {path}:{first}-{last}: {fate}; {done.answered} facts before them answered, "
          f"{done.summary()['not_sent'] - done.unsent} after them not sent. Import the file again: the service applies "
          "each (source, event_id) once (E8)", file=sys.stderr)
    return status


NOT_APPLIED = ("FACT_OUTCOME_INVALID", "FACT_OUTCOME_QUARANTINED")
"""Outcomes of a fact that was not applied: refused, or set aside as too old (E6). As ``stock load``
judges a row, an import with any of them exits 3: the operator must see what did not land."""


def _judged(counts: dict[str, int]) -> int:
    """Exit status 3 when facts were not applied, saying how many and of which outcome."""
    missed = {name.removeprefix("FACT_OUTCOME_").lower(): counts[name] for name in NOT_APPLIED if counts.get(name)}
    if not missed:
        return EXIT_OK
    print(f"atpctl: {sum(missed.values())} facts not applied ({', '.join(f'{k} {n}' for k, n in missed.items())}); "
          "each is named above with why", file=sys.stderr)
    return EXIT_INVALID


EMBEDDED_URL_FILE = Path("var/redis/redis.url")
"""Where ``make run``'s embedded Redis writes its URL, with the port and password it takes at each start
(``atp-publisher`` reads it too when given no ``--redis-url``)."""


async def _publish(args: argparse.Namespace, path: Path, stream: str, redis_url: str | None) -> int:
    """The input-stream entry format (``_publish.entry_fields``), once every line of the file is
    one the intake would take: the intake tells a producer nothing of an entry it dead-letters.
    Redis refusing or lost part-way: what the stream took is counted, and the exit status is not 0."""
    if not redis_url:  # a bad command line, as argparse says it
        print(f"atpctl: error: events publish needs --redis-url (or ATP_REDIS_URL, or {EMBEDDED_URL_FILE} where "
              "make run's Redis is)", file=sys.stderr)
        return EXIT_USAGE
    try:
        import redis.asyncio as aioredis

        from atp_client._publish import entries, write
    except ImportError:
        raise SystemExit("atpctl: events publish needs the redis package: pip install 'atp-client[redis]'") from None
    for _ in entries(path, numbered_facts(path)):  # every line checked before any is written
        pass
    try:
        client = aioredis.RedisCluster.from_url(redis_url) if args.redis_cluster else aioredis.Redis.from_url(redis_url)
    except ValueError as exc:  # a bad command line, as argparse says it (the URL unsaid: it may hold a password)
        print(f"atpctl: error: argument --redis-url: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        written = await write(client, stream, entries(path, numbered_facts(path)), EVENTS_CHUNK)
    finally:
        await client.aclose()
    if written.stopped_at:
        print(written.told(path), file=sys.stderr)
    _dump(args, written.summary(stream))
    if written.interrupted:
        return EXIT_INTERRUPTED
    return written.status if written.stopped_at else EXIT_OK  # 6, or a refusal no retry changes (3, 7)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv  # wherever it is given: before or after the command
    parser = build_parser()
    args = parser.parse_args([a for a in argv if a != "--json"])
    if args.command == "watch" and args.snapshot and args.since:  # AtpClient.watch refuses it: said as argparse would
        parser.error("argument --since: not with --snapshot, which prints every published value and then the "
                     "changes after them: one or the other")
    if (args.tls_cert is None) != (args.tls_key is None):  # gRPC aborts on one alone; a key alone went plaintext
        given, missing = ("--tls-cert", "--tls-key") if args.tls_key is None else ("--tls-key", "--tls-cert")
        parser.error(f"argument {given}: mutual TLS needs {missing} too: give both or neither")
    if args.command != "token" and getattr(args, "events_command", "") != "publish" and (  # the commands that dial
            wrong := arg.target_problem(args.target)) is not None:
        parser.error(f"argument --target: {wrong}")
    if (unusable := arg.tls_problem(args.tls_ca, args.tls_cert, args.tls_key)) is not None:
        parser.error("argument {}: {}".format(*unusable))
    args.json = as_json
    try:
        return _main(args)
    except BadInput as exc:  # nothing of the file was sent
        print(f"atpctl: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside a bulk command's summary
        print(INTERRUPTED_CHANGE if args.command in CHANGES else "atpctl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`atpctl ... | head`): end quietly, and keep the interpreter's
        # final flush of stdout from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(args: argparse.Namespace) -> int:
    if args.command == "token":
        return _new_token(args.name, args.roles)
    if args.command == "events" and args.events_command == "publish":
        url = args.redis_url
        if not url and EMBEDDED_URL_FILE.is_file():  # its password is nowhere else: not given on a command line
            try:
                url = EMBEDDED_URL_FILE.read_text().strip()
            except OSError as exc:
                print(f"atpctl: error: events publish: {EMBEDDED_URL_FILE}: {exc.strerror}", file=sys.stderr)
                return EXIT_USAGE
        return asyncio.run(_publish(args, args.file, args.stream, url))
    try:
        return asyncio.run(_run(args))
    except grpc.aio.AioRpcError as exc:
        code, line = refusal(exc)
        print(line, file=sys.stderr)
        if args.command in CHANGES and in_doubt_after(exc, retried=args.retries > 0):
            print(IN_DOUBT_LINE, file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
