"""``--input-streams``: a pipeline of ``inputstreams.SimStreams`` (``client.pipeline(transaction=False)``), and how a
call to that simulated Redis fails."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from atp_service.intake import quarantine

if TYPE_CHECKING:
    from tests.sim.inputstreams import SimStreams


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fail(kind: str) -> BaseException:
    return RedisConnectionError("connection refused (simulated)") if kind == "refused" else \
        RedisTimeoutError("answer lost (simulated)")


class Pipeline:
    """``client.pipeline(transaction=False)``: commands sent together, each run in turn; the answers lost
    (or the connection refused) as ``RedisFaults`` draws — after all, some or none of them ran."""

    def __init__(self, redis: SimStreams) -> None:
        self._redis, self._queued = redis, list[tuple[str, Callable[[], Any]]]()
        self._scripts: list[tuple[list[str], list[Any]]] = []

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def eval(self, script: str, numkeys: int, *rest: Any) -> None:
        assert script == quarantine._ONCE
        keys, args = [_text(k) for k in rest[:numkeys]], list(rest[numkeys:])
        self._queued.append(("quarantine", lambda: self._redis.quarantine_script(keys, args)))
        self._scripts.append((keys, args))

    def xack(self, stream: str, group: str, *ids: bytes) -> None:
        def ack() -> int:  # a late script waiting for it lands first (``LateLetters.acking``): not inside a script
            self._redis.letters.acking(stream, [one if isinstance(one, bytes) else str(one).encode() for one in ids],
                                      self._redis.faults.events)
            return self._redis.xack(stream, group, *ids)
        self._queued.append(("ack", ack))

    def zmscore(self, key: str, members: list[str]) -> None:  # the quarantine stream's set (``again.py``)
        def scores() -> list[float | None]:
            held = self._redis.written.get(key, {})
            return [None if member not in held else float(held[member]) for member in members]
        self._queued.append(("zmscore", scores))

    def hmget(self, key: str, fields: list[str]) -> None:  # the entries named beside it (``quarantine.ahead_key``), or
        # the letters of the entries kept refused (``refused_kept.recall``: the refused set's, ``:letters`` after it)
        def values() -> list[bytes | None]:
            held = self._redis.refused.get(key.removesuffix(":letters"), {}) if key.endswith(":letters") else \
                self._redis.named_ahead.get(key, {})
            return [held.get(f) for f in fields]
        self._queued.append(("hmget", values))

    def xrevrange(self, stream: str, _max: str, _min: str, count: int) -> None:  # a stream's newest (``again.py``)
        def newest() -> list[tuple[bytes, dict[bytes, bytes]]]:
            held = self._redis.streams.get(stream)
            last = next(reversed(held.entries), None) if held else None
            return [] if last is None else [(last, {})][:count]
        self._queued.append(("xrevrange", newest))

    def xpending_range(self, stream: str, group: str, low: bytes, _high: bytes, _count: int, consumer: str) -> None:
        self._queued.append(("xpending", lambda: self._redis.xpending_one(stream, group, low, consumer)))

    async def execute(self) -> list[Any]:
        what = "+".join(sorted({name for name, _ in self._queued}))
        await asyncio.sleep(0)
        kind, ran = self._redis.faults.draw(what, len(self._queued))
        replies: list[Any] = []
        for _, run in self._queued[:ran]:
            try:
                replies.append(run())
            except ResponseError as exc:  # each command runs; redis-py raises the first error after
                replies.append(exc)
        if kind != "ok":
            for keys, args in self._scripts:
                self._redis.on_failed_write(keys, args)
            raise _fail(kind)
        if refused := next((r for r in replies if isinstance(r, ResponseError)), None):
            raise refused
        return replies
