"""``atpctl events import`` (a JSONL file of facts through RecordEvents) and ``atpctl events publish`` (the
same onto a Redis input stream, as POS/WMS do): every line checked first, the counts per outcome, an
exit status by the worst line, and where a run stopped, what became of its lines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from atp_client import _args as arg
from atp_client._client import AtpClient
from atp_client._import import Imported, count_facts, numbered_facts, send_all
from atp_client._output import EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_USAGE, answer, refusal
from atp_client.pb.atp.v1 import atp_pb2 as pb

EVENTS_CHUNK = 1000
CHECK_PAUSE_EVERY = 10_000
"""Lines ``events publish`` checks between two pauses, where a Ctrl-C is seen (a fraction of a second of checking)."""
EMBEDDED_URL_FILE = Path("var/redis/redis.url")
"""Where ``make run``'s embedded Redis writes its URL, with the port and password it takes at each start
(``atp-publisher`` reads it too when given no ``--redis-url``): ``embedded_url_file`` with ATP_DATA_DIR unset."""


def embedded_url_file() -> Path:
    """Where the embedded service of this environment writes its Redis's URL: ``<ATP_DATA_DIR>/redis/redis.url``,
    ATP_DATA_DIR read as the service reads it (unset: ``var``)."""
    return Path(os.environ.get("ATP_DATA_DIR", "var")) / EMBEDDED_URL_FILE.relative_to("var")


async def import_facts(args: argparse.Namespace, client: AtpClient, path: Path) -> int:
    """Facts from a JSONL file, ``--batch`` a call, once every line of it reads as a fact; the
    counts per outcome (so far, if a call is refused for good). Exit status 3 when any fact was not
    applied (invalid, quarantined): an import is judged by its worst line."""
    total, last_line = count_facts(path)

    def tell(result: pb.FactResult) -> None:
        name = pb.FactOutcome.Name(result.outcome)
        if result.HasField("error"):
            print(f"{result.event_id}: {name}: {result.error.message}", file=sys.stderr)
        elif result.detail:
            print(f"{result.event_id}: {name}: {result.detail}", file=sys.stderr)

    done = await send_all(client, numbered_facts(path, last_line), total, args.batch, tell)
    stopped = _stopped(path, done) if done.stopped_lines else None
    answer(done.summary(), args.json)
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



def publish_facts(args: argparse.Namespace) -> int:
    """``events publish``: to ``--redis-url``, else to the embedded service's Redis (``embedded_url_file``)."""
    try:  # as the service reads it: `on` was taken as false, and `maybe` too, without a word
        args.redis_cluster = arg.env_boolean("ATP_REDIS_CLUSTER", args.redis_cluster)
    except ValueError as exc:
        print(f"atpctl: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:  # E-rules hold only for facts an intake reads: a stream no intake reads loses them, unsaid
        stream = arg.input_stream(args.stream if getattr(args, "stream_given", False) else None, args.redis_cluster)
    except ValueError as exc:
        print(f"atpctl: error: argument --stream: {exc}", file=sys.stderr)
        return EXIT_USAGE
    url, url_file = args.redis_url, embedded_url_file()
    if not url and url_file.is_file():  # its password is nowhere else: not given on a command line
        try:
            url = url_file.read_text().strip()
        except OSError as exc:
            print(f"atpctl: error: events publish: {url_file}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    return asyncio.run(_publish(args, args.file, stream, url))


async def _checked(path: Path, entries: Callable[[Path, Iterator[tuple[int, pb.Fact]]], Iterator[tuple[int, Any]]]
                   ) -> int:
    """The last line of ``path``, each line checked as an entry (``_publish.entries``), with a pause every
    ``CHECK_PAUSE_EVERY`` lines: a Ctrl-C cancels the run's task, which only a pause lets it see (without one, a file
    of millions of lines was checked to its end first, and a bad line after the Ctrl-C refused it)."""
    last_line = 0
    for checked, (n, _) in enumerate(entries(path, numbered_facts(path)), 1):
        last_line = n
        if checked % CHECK_PAUSE_EVERY == 0:  # lines checked, not line numbers: blank lines are skipped
            await asyncio.sleep(0)
    return last_line


async def _closed(client: Any) -> bool:
    """``client`` closed (its connections' ends awaited); False where a Ctrl-C landed meanwhile, the close left to the
    process's end: the run's summary is said all the same. Raised, the run ended on "atpctl: interrupted" alone, where
    the stream held what it took: the operator, told nothing, published the file again, past the grace window twice."""
    try:
        await client.aclose()
    except asyncio.CancelledError:
        return False
    return True


def _unquoted(refusal: ValueError) -> str:
    """redis-py's refusal of a URL, quoting nothing of it: a password holding an unencoded '#', '/' or '?' ends the
    authority there, its start read as the port, which Python's words quote ("... integer value as 's3c'")."""
    said = str(refusal)
    if said.startswith(_PORT_NOT_A_NUMBER):
        return (f"{_PORT_NOT_A_NUMBER} (not quoted: it may be the start of a password holding '#', '/' or '?', which a "
                "URL must percent-encode: %23, %2F, %3F)")
    return said


_PORT_NOT_A_NUMBER = "Port could not be cast to integer value"


async def _publish(args: argparse.Namespace, path: Path, stream: str, redis_url: str | None) -> int:
    """The input-stream entry format (``_publish.entry_fields``), once every line of the file is
    one the intake would take: the intake tells a producer nothing of an entry it dead-letters.
    Redis refusing or lost part-way: what the stream took is counted, and the exit status is not 0."""
    if not redis_url:  # a bad command line, as argparse says it
        print(f"atpctl: error: events publish needs --redis-url (or ATP_REDIS_URL, or {embedded_url_file()} where "
              "an embedded service's Redis is)", file=sys.stderr)
        return EXIT_USAGE
    try:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        from atp_client._cluster import Cluster
        from atp_client._publish import entries, write
    except ImportError:
        raise SystemExit("atpctl: events publish needs the redis package: pip install 'atp-client[redis]'") from None
    try:  # every line checked before any is written
        last_line = await _checked(path, entries)
    except asyncio.CancelledError:  # Ctrl-C: the run's task cancelled at a pause of the check
        print(f"atpctl: {path}: interrupted while its lines were checked: nothing published", file=sys.stderr)
        answer({"stream": stream, "published": 0, "in_doubt": 0}, args.json)
        return EXIT_INTERRUPTED
    bounds = {"socket_timeout": args.timeout, "socket_connect_timeout": args.timeout}  # --timeout: each call's
    try:  # a cluster client's retry sent a chunk's redirected entry again after its connection was lost: its answer
        # was that later try's, a refusal counted not written, where the lost try may have been (R7, E8). None: in doubt
        client = (Cluster.from_url(redis_url, retry=Retry(NoBackoff(), 0), **bounds) if args.redis_cluster
                  else aioredis.Redis.from_url(redis_url, **bounds))
    except ValueError as exc:  # a bad command line, as argparse says it (the URL unsaid: it may hold a password)
        print(f"atpctl: error: argument --redis-url: {_unquoted(exc)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        written = await write(client, stream, entries(path, numbered_facts(path, last_line)), EVENTS_CHUNK,
                              args.timeout)
    finally:
        closed = await _closed(client)
    written.interrupted |= not closed
    if written.stopped_at:
        print(written.told(path), file=sys.stderr)
    elif not closed:
        print(f"atpctl: {path}: interrupted as the connection closed, every line answered: {written.published} "
              "entries written in all", file=sys.stderr)
    answer(written.summary(stream), args.json)
    if written.interrupted:
        return EXIT_INTERRUPTED
    return written.status if written.stopped_at else EXIT_OK  # 6, or a refusal no retry changes (3, 7)

