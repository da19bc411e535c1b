"""``atpctl events publish``: a JSONL file of facts appended onto an input stream, as POS and WMS do.

The intake answers nothing to a producer: an entry it cannot apply goes to the dead-letter stream,
and the producer is none the wiser. So every line is checked against the entry format
(docs/OPERATIONS.md, "Input streams") before any is written: a line the intake would dead-letter
for its shape refuses the file, naming its line and field, and nothing of the file is written.
What depends on the service's settings (``max_id_length``, ``max_quantity``, how far ahead of its
clock a fact may be, E7) is still the intake's to judge; those entries go to its dead-letter stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoPermissionError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_client._output import EXIT_DENIED, EXIT_INVALID, EXIT_UNAVAILABLE, EXIT_USAGE, BadInput
from atp_client._time import epoch_ms
from atp_client.pb.atp.v1 import atp_pb2 as pb

_NOT_PRINTABLE = "must be printable (no control, format, separator or unassigned character; ASCII space is fine)"
"""The service's own refusal of such an id (``str.isprintable``), said before the entry is written."""

_IDS = ("event_id", "source", "sku", "location")
_SIGNED = {pb.FACT_KIND_ADJUST: "a non-zero delta", pb.FACT_KIND_COUNT: "at least 0"}
"""The quantity each kind takes besides the default, a positive number of units."""
Fields = dict[str, str | int]
T = TypeVar("T")


class LineRefused(ValueError):
    """A line the intake would dead-letter: ``field`` names the field at fault."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field


def entry_fields(fact: pb.Fact) -> Fields:
    """``fact`` as an input-stream entry (one flat field per Fact field, kind by name, the time in
    epoch ms), or ``LineRefused`` naming the first field the intake would refuse whatever its limits."""
    for name in _IDS:
        value = getattr(fact, name)
        if not value:
            raise LineRefused(name, "must not be empty")
        if not value.isprintable():
            raise LineRefused(name, _NOT_PRINTABLE)
    if fact.kind == pb.FACT_KIND_UNSPECIFIED or fact.kind not in pb.FactKind.values():
        raise LineRefused("kind", f"must be one of {', '.join(pb.FactKind.keys()[1:])}, got {fact.kind}")
    _check_quantity(fact)
    at = epoch_ms(fact.event_time)
    if not fact.HasField("event_time") or at <= 0:
        raise LineRefused("event_time", "must be set, after 1970-01-01")
    kind = pb.FactKind.Name(fact.kind).removeprefix("FACT_KIND_")
    fields: Fields = {
        "event_id": fact.event_id, "source": fact.source, "kind": kind, "sku": fact.sku,
        "location": fact.location, "quantity": fact.quantity, "event_time_ms": at,
    }
    if fact.reservation_id:
        if fact.kind != pb.FACT_KIND_SHIPMENT:
            raise LineRefused("reservation_id", f"only SHIPMENT facts may name a reservation, not "
                                                f"{pb.FactKind.Name(fact.kind)}")
        if not fact.reservation_id.isprintable():
            raise LineRefused("reservation_id", _NOT_PRINTABLE)
        fields["reservation_id"] = fact.reservation_id
    return fields


def _check_quantity(fact: pb.Fact) -> None:
    quantity = fact.quantity
    wanted = _SIGNED.get(fact.kind, "positive")
    ok = quantity != 0 if fact.kind == pb.FACT_KIND_ADJUST else (
        quantity >= 0 if fact.kind == pb.FACT_KIND_COUNT else quantity > 0)
    if not ok:
        raise LineRefused("quantity", f"{pb.FactKind.Name(fact.kind)} takes {wanted}, got {quantity}")


def entries(path: Path, facts: Iterable[tuple[int, pb.Fact]]) -> Iterator[tuple[int, Fields]]:
    """Each numbered fact as its entry; a line the intake would refuse ends the run naming it."""
    for n, fact in facts:
        try:
            yield n, entry_fields(fact)
        except LineRefused as exc:
            raise BadInput(f"{path}:{n}: {exc}") from None


@dataclass
class Written:
    """How far a run got: entries the stream took, entries sent whose answer never came (written
    or not: a connection lost mid-chunk), and the file line the run stopped at (0: it did not)."""

    published: int = 0
    in_doubt: int = 0
    stopped_at: int = 0
    error: str = ""
    interrupted: bool = False
    """Ctrl-C stopped the run."""
    status: int = EXIT_UNAVAILABLE
    """atpctl's exit status of the refusal that stopped the run (``refusal_status``)."""
    not_sent: bool = False
    """The chunk the run stopped at was never sent: its connection could not be made."""

    def summary(self, stream: str) -> dict[str, str | int]:
        return {"stream": stream, "published": self.published, "in_doubt": self.in_doubt}

    def told(self, path: Path) -> str:
        """What stopped the run, what of it was written, and what to do (for stderr)."""
        doubt = f", {self.in_doubt} more sent without an answer (written or not)" if self.in_doubt else ""
        then = ("again" if self.interrupted else "again once Redis takes writes" if self.status == EXIT_UNAVAILABLE
                else "again once --stream names the input stream" if self.status == EXIT_INVALID
                else "without --redis-cluster (and ATP_REDIS_CLUSTER false): --redis-url is one Redis"
                if self.status == EXIT_USAGE else "with a Redis user that may XADD to --stream")
        batch = ("its batch not sent" + ("" if self.interrupted else ": no connection") if self.not_sent
                 else "a line after it sent in the same batch may be among them")
        return (f"atpctl: {path}:{self.stopped_at}: not published: {self.error}; {self.published} entries written in "
                f"all ({batch}){doubt}. Publish the file {then}: the "
                "intake applies each (source, event_id) once within the grace window (E8)")


def redis_said(error: BaseException, no_cluster: bool = False) -> BaseException:
    """What Redis refused, under a cluster client's wrapping: no node reachable, why the last one was not; a refusal
    of ``CLUSTER SLOTS``, which redis-py tells as "Cluster mode is not enabled" whatever Redis said, the refusal
    itself (a user's ACL without ``+cluster|slots``: NOPERM, 7, not a bad command line telling to publish without
    --redis-cluster), unless ``no_cluster`` (``no_cluster_there``): then the cluster client's own words."""
    error = _unwrapped(error)
    refused = slots_refused(error)
    return refused if refused is not None and not no_cluster else error


def _unwrapped(error: BaseException) -> BaseException:
    while isinstance(error, RedisClusterException) and isinstance(error.__cause__, Exception):
        error = error.__cause__
    return error


def slots_refused(error: BaseException) -> ResponseError | None:
    """Redis's refusal of ``CLUSTER SLOTS``, the cluster client's first read, where ``error`` is redis-py's word for
    it: the ``RedisClusterException`` it raises while handling the ``ResponseError`` (its context). Else None."""
    said = _unwrapped(error).__context__
    return said if isinstance(_unwrapped(error), RedisClusterException) and isinstance(said, ResponseError) else None


async def no_cluster_there(client: Any, error: BaseException, timeout_s: float | None) -> bool:
    """Whether ``error``, a cluster client's first read refused, is a Redis out of cluster mode: asked of the node
    the URL names (``INFO cluster``: ``cluster_enabled:0``), not read in the words of a refusal (redis-py's are the
    same for any; Redis's change with its version, and a renamed ``CLUSTER`` or a proxy says others). A user's ACL
    refusing it (NOPERM) is not asked: that is what to fix first. Where the user may not run ``INFO`` (it is
    ``@dangerous``) or it is not answered: the refusal's kind, an ``ERR`` (plain ``ResponseError``; redis-py names
    every code it knows, NOPERM, LOADING, CLUSTERDOWN, TRYAGAIN, by a class of its own)."""
    refused = slots_refused(error)
    if refused is None or isinstance(refused, NoPermissionError) or not isinstance(client, RedisCluster):
        return False
    for node in list(client.nodes_manager.startup_nodes.values()):
        try:
            info = await _within(node.execute_command("INFO", "cluster"), timeout_s)
        except (RedisError, RedisClusterException, OSError):
            break
        return isinstance(info, dict) and info.get("cluster_enabled") == 0
    return type(refused) is ResponseError and _code(refused) == "ERR"


def _code(refused: ResponseError) -> str | None:
    """The code Redis refused with (ERR, BUSY): redis-py's ``status_code`` from 7.2 on (None for a code it knows no
    class for). Before 7.2 (``redis>=7.0``) a refusal had none: redis-py cut a code it knows (ERR) from the text and
    left one it does not at its head (``BUSY Redis is busy running a script``), which read as an ERR."""
    if hasattr(refused, "status_code"):
        code: str | None = refused.status_code
        return code
    head = str(refused).split(" ", 1)[0]
    return head if head.isalpha() and head.isupper() else "ERR"


def refusal_status(error: BaseException, no_cluster: bool = False) -> int:
    """The exit status of Redis refusing an entry: for good where no retry changes it (a key of another type at
    the stream: fix --stream, 3; the user's ACL or password: 7; ``no_cluster``, --redis-cluster naming a Redis out of
    cluster mode: 2), else 6, retry later (out of memory, read-only after a failover, unreachable). A refusal for
    good was 6 and a script retrying on 6 looped for ever."""
    if no_cluster:
        return EXIT_USAGE  # --redis-cluster (ATP_REDIS_CLUSTER) names one Redis: no retry changes it
    error = redis_said(error)
    if isinstance(error, NoPermissionError | AuthenticationError):
        return EXIT_DENIED
    if isinstance(error, ResponseError) and str(error).startswith("WRONGTYPE"):
        return EXIT_INVALID
    return EXIT_UNAVAILABLE


async def write(client: Any, stream: str, numbered: Iterable[tuple[int, Fields]], chunk: int,
                timeout_s: float | None = None) -> Written:
    """Each entry XADDed to ``stream``, ``chunk`` a round trip. A chunk Redis refuses entries of
    (out of memory, read-only after a failover, ACL) ends the run, naming its first refused entry;
    every entry the stream took is counted, those of the chunk after a refused one too (Redis runs
    each command of a pipeline on its own: one refused, the next may still be taken). A chunk whose
    answer is lost counts as in doubt. ``timeout_s`` (``--timeout``) bounds each call: a cluster's first
    read of its slots, and each chunk, its connection and its answer, redis-py's retries included."""
    done = Written()
    lines: list[int] = []
    async with contextlib.AsyncExitStack() as held:
        try:  # a cluster's pipeline asks its nodes for the slots first: none reachable was a traceback, exit 1
            pipe = await _within(held.enter_async_context(client.pipeline(transaction=False)), timeout_s)
        except (RedisError, RedisClusterException, OSError) as exc:
            first = next(iter(numbered), None)
            if first is not None:  # nothing sent: as a chunk whose connection was refused
                await _stopped_unsent_asked(done, first[0], exc, client, timeout_s)
            return done
        except asyncio.CancelledError:  # Ctrl-C there (a cluster's slots read): ended with the summary, as any step
            first = next(iter(numbered), None)
            done.stopped_at, done.error, done.not_sent = (first[0] if first else 0), "interrupted", True
            done.interrupted = True
            return done
        for n, fields in numbered:
            pipe.xadd(stream, dict[Any, Any](fields))
            lines.append(n)
            if len(lines) >= chunk and not await _execute(pipe, lines, done, timeout_s):
                return done
        if lines:  # none left: nothing to connect for, nor to say of
            await _execute(pipe, lines, done, timeout_s)
    return done


async def _within(step: Coroutine[Any, Any, T], timeout_s: float | None) -> T:
    """What ``step`` gives, or, none within ``timeout_s``, redis-py's ``TimeoutError`` naming ``--timeout``: ``step``
    cancelled, not waited for (redis-py can lose a cancellation, as ``_execute`` says)."""
    task = asyncio.ensure_future(step)
    try:
        finished = (await asyncio.wait([task], timeout=timeout_s))[0]
    except asyncio.CancelledError:
        task.cancel()
        task.add_done_callback(_retrieved)  # its end (an error once the client closes) is not news
        raise
    if not finished:
        task.cancel()
        task.add_done_callback(_retrieved)
        raise RedisTimeoutError(_no_answer(timeout_s))
    return task.result()


def _no_answer(timeout_s: float | None) -> str:
    return f"no answer within --timeout {timeout_s:g} s"


async def _execute(pipe: Any, lines: list[int], done: Written, timeout_s: float | None = None) -> bool:
    """Whether every entry of the chunk was taken; ``done`` counts those that were."""
    # The chunk runs as a task of its own and is waited for apart (asyncio.wait cancels nothing), so that
    # Ctrl-C and ``timeout_s`` stop the run at once: redis-py can lose a cancellation (its send's
    # ``asyncio.wait_for`` under Python 3.11 returns a result that lands in the same turn) and would go on
    # to wait out its socket timeout. The chunk is cancelled all the same; asyncio.run's teardown cancels it again.
    chunk = asyncio.ensure_future(_connected_then_sent(pipe, done))
    try:
        if not (await asyncio.wait([chunk], timeout=timeout_s))[0]:  # --timeout passed: R7, sent is in doubt
            _abandoned(chunk, lines, done, f"TimeoutError: {_no_answer(timeout_s)}")
            return False
        answers = chunk.result()
    except (RedisError, RedisClusterException, OSError, _NotSent) as exc:  # no answer: any of them may be written
        if isinstance(exc, _NotSent):  # refused at its connect: none was sent
            assert isinstance(exc.__cause__, BaseException)
            await _stopped_unsent_asked(done, lines[0], exc.__cause__, getattr(pipe, "cluster_client", None), timeout_s)
            return False
        done.in_doubt, done.stopped_at, done.error = len(lines), lines[0], f"{type(exc).__name__}: {exc}"
        done.status = refusal_status(exc)
        return False
    except asyncio.CancelledError:  # Ctrl-C while the chunk was out: any of them may have been written
        _abandoned(chunk, lines, done, "interrupted")
        done.interrupted = True
        return False
    for n, answer in zip(lines, answers, strict=True):
        if not isinstance(answer, Exception):
            done.published += 1  # every entry taken, those after a refused one too: the stream holds them
            continue
        done.in_doubt += _unanswered(answer)
        if not done.stopped_at:
            done.stopped_at, done.error = n, f"{type(answer).__name__}: {answer}"
            done.status = refusal_status(answer)
    lines.clear()
    return not done.stopped_at


def _unanswered(answer: Exception) -> bool:
    """Whether an entry's answer is its connection lost or timed out after the chunk went out, no word of Redis (a
    cluster pipeline gives a node's such error as the answer of each of its commands): in doubt, written or not (R7).
    Counted neither published nor in doubt, the summary said nothing of them. Redis's own refusals (LOADING, a
    password) are answers: not written."""
    return (isinstance(answer, RedisConnectionError | RedisTimeoutError | OSError)
            and not isinstance(answer, BusyLoadingError | AuthenticationError))


def _abandoned(chunk: asyncio.Future[Any], lines: list[int], done: Written, why: str) -> None:
    """The run stopped at the chunk, left unanswered (``why``): in doubt once sent, not sent while still connecting."""
    chunk.cancel()
    chunk.add_done_callback(_retrieved)  # its end (an error once the client closes) is not news
    done.stopped_at, done.error = lines[0], why
    done.in_doubt = 0 if done.not_sent else len(lines)  # still connecting: nothing of it was sent (R7)


def _stopped_unsent(done: Written, line: int, error: BaseException, no_cluster: bool) -> None:
    """The run stopped at ``line``, whose chunk was never sent: its connection could not be made (``no_cluster``:
    the cluster client's, the node the URL names out of cluster mode)."""
    said = redis_said(error, no_cluster)
    shown = said if isinstance(said, ResponseError) else error  # Redis's own refusal, where a cluster client hid it
    done.stopped_at, done.error, done.not_sent = line, f"{type(shown).__name__}: {shown}", True
    done.status = refusal_status(error, no_cluster)


async def _stopped_unsent_asked(done: Written, line: int, error: BaseException, client: Any,
                                timeout_s: float | None) -> None:
    """``_stopped_unsent``, the node asked first whether it is out of cluster mode (``no_cluster_there``, up to
    ``timeout_s``). A Ctrl-C while it is asked stops the run there all the same, interrupted, with its summary (what
    the stream took before; nothing of this chunk, never sent), as a Ctrl-C at any other step does."""
    try:
        no_cluster = await no_cluster_there(client, error, timeout_s)
    except asyncio.CancelledError:
        _stopped_unsent(done, line, error, False)
        done.interrupted = True
        return
    _stopped_unsent(done, line, error, no_cluster)


class _NotSent(Exception):
    """A chunk's connection could not be made (refused, unreachable, a wrong password): nothing of it was sent."""


async def _connected_then_sent(pipe: Any, done: Written) -> list[Any]:
    """The chunk's answers, once its connection is made: a connect refused (Redis down at the start or between
    chunks) is ``_NotSent``, certain, not a chunk in doubt. Made inside ``execute``, it was told as "sent without an
    answer (written or not)" when nothing was. Once the chunk is out, a lost connection leaves it in doubt, whatever
    redis-py's retries of it then meet (a refused reconnect included): an earlier try may have been written.
    ``done.not_sent`` holds while the connection is being made, so that Ctrl-C then is told as not sent either."""
    done.not_sent = True
    try:
        if isinstance(pipe, Pipeline) and pipe.connection is None:  # execute takes it and gives it back
            pool: Any = pipe.connection_pool  # redis-py's get_connection is untyped
            pipe.connection = await pool.get_connection()
        elif isinstance(pipe, ClusterPipeline):  # no node reachable: RedisClusterException, no RedisError
            await pipe.cluster_client.initialize()  # at once where it is done
    except (RedisError, RedisClusterException, OSError) as exc:
        raise _NotSent from exc
    done.not_sent = False
    answers: list[Any] = await pipe.execute(raise_on_error=False)
    return answers


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
