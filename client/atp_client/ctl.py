"""``atpctl``: operate an ATP service from a shell. Prints JSON (a table on a terminal); a refusal exits
with a status per class of gRPC status (``_output.EXIT_HELP``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys

import grpc

from atp_client import _args as arg
from atp_client._access import PERMISSIONS, new_token, token_hash
from atp_client._client import AtpClient, RetryPolicy, tls_credentials
from atp_client._errors import NOT_CONNECTED, AtpError
from atp_client._events_commands import import_facts, publish_facts
from atp_client._handshake import handshake_hint
from atp_client._output import (
    CHANGES,
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_RESNAPSHOT,
    EXIT_USAGE,
    IN_DOUBT_LINE,
    INTERRUPTED_CHANGE,
    BadInput,
    answer,
    in_doubt_after,
    plain,
    refusal,
)
from atp_client._parser import build_parser
from atp_client.pb.atp.v1 import atp_pb2 as pb

__all__ = ["build_parser", "main"]


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


async def _run(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        cmd = args.command
        if cmd not in ("events", "stock"):  # refused: nothing sent, said so (R7); bulk commands connect per call
            await client.connect()
        if cmd == "availability":
            answer(await client.availability(args.keys), args.json)
        elif cmd == "reserve":
            answer(await client.reserve(args.reservation_id, args.lines, order_ref=args.order_ref, channel=args.channel,
                                        ttl_seconds=args.ttl, allow_partial=args.allow_partial), args.json)
        elif cmd == "confirm":
            answer(await client.confirm(args.reservation_id), args.json)
        elif cmd == "reservation":
            answer(await client.get_reservation(args.reservation_id), args.json)
        elif cmd == "release":
            answer(await client.release(args.reservation_id, args.lines, args.operation_id), args.json)
        elif cmd in ("fulfil", "fulfill"):
            answer(await client.fulfill(args.reservation_id, args.lines, args.operation_id), args.json)
        elif cmd == "explain":
            sku, location = args.key
            answer(await client.stub.ExplainAvailability(pb.ExplainAvailabilityRequest(sku=sku, location=location),
                                                        timeout=client.timeout_s), args.json)
        elif cmd == "safety-stock":
            sku, location = args.key
            request = pb.SetSafetyStockRequest(sku=sku, location=location, quantity=args.quantity)
            answer(await client.stub.SetSafetyStock(request, timeout=client.timeout_s), args.json)
        elif cmd == "events" and args.events_command == "import":
            return await import_facts(args, client, args.file)
        elif cmd == "reload-estate":
            answer(await client.stub.ReloadEstate(pb.ReloadEstateRequest(), timeout=client.timeout_s), args.json)
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
    if report.exists() and report.samefile(args.file):  # cleared, it was the extract itself: deleted
        print(f"atpctl: error: argument --report: {str(report)!r} is the extract itself: name another file",
              file=sys.stderr)
        return EXIT_USAGE
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
        print(f"{line}\natpctl: the load stopped: {summary.not_answered - summary.not_sent} rows were sent without an "
              f"answer (loaded or not), {summary.not_sent} not sent (not loaded); run the same load again: a re-load "
              "applies nothing twice (E8)", file=sys.stderr)
    if summary.rejected:
        print(f"atpctl: {len(summary.rejected)} rows not applied, see {report}", file=sys.stderr)
    answer(summary.as_dict(), args.json)
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
    # A refusal names what the operator set: the flag, else the variable (the default is always dialled).
    target_named = "argument --target" if getattr(args, "target_given", False) else "ATP_TARGET"
    if args.command != "token" and getattr(args, "events_command", "") != "publish" and (  # the commands that dial
            wrong := arg.target_problem(args.target)) is not None:
        parser.error(f"{target_named}: {wrong}")
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
        return publish_facts(args)
    try:
        return asyncio.run(_run(args))
    except grpc.aio.AioRpcError as exc:
        code, line = refusal(exc)
        print(line, file=sys.stderr)
        if (hint := _handshake_hint(exc, args)) is not None:
            print(f"atpctl: {hint}", file=sys.stderr)
        if args.command in CHANGES and in_doubt_after(exc, retried=args.retries > 0):
            print(IN_DOUBT_LINE, file=sys.stderr)
        return code



def _handshake_hint(exc: grpc.aio.AioRpcError, args: argparse.Namespace) -> str | None:
    """For a connection that failed (nothing sent): TLS against plaintext or the reverse, where the service proves
    which it speaks (``handshake_hint``); gRPC's own words are the same as for a service down."""
    failed = isinstance(exc, AtpError) and exc.reason == NOT_CONNECTED and "connection failed" in (exc.details() or "")
    if not failed:
        return None
    return handshake_hint(args.target, tls=bool(args.tls_ca or args.tls_cert), timeout_s=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
