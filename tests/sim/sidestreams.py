"""What FactDesk writes besides the log, as the simulated Redis takes it (``simlog.SimLog.client``)."""

from __future__ import annotations

import asyncio
from typing import Any

from atp_service.intake.quarantine import _FIELDS, _PER_FACT
from atp_service.storage.nodes import Call


async def run_pipelined(pipe: Any, calls: list[Call]) -> list[Any]:
    """``Nodes.run`` of ``calls`` on a fake Redis's ``pipe``: each script call ``eval``'d, all sent at once
    (this fake's and ``inputstreams.SimStreams``')."""
    for call in calls:
        pipe.eval(call.script.body, len(call.keys), *call.keys, *call.args)
    replies: list[Any] = await pipe.execute()
    return replies


class SideStreams:
    """What FactDesk writes besides the log (the quarantine stream): a pipeline that records XADDs,
    and the quarantine script's (``intake/quarantine.py``) entries, each fact's once by its marker."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, Any]]] = []
        self.markers: set[str] = set()

    def pipeline(self, transaction: bool = False) -> _Pipeline:
        return _Pipeline(self.entries, self.markers)

    async def run(self, calls: list[Call]) -> list[Any]:
        """``Nodes.run`` of the quarantine script's calls (``FactDesk``'s writes): a pipeline of them."""
        return await run_pipelined(self.pipeline(), calls)

    async def time(self) -> tuple[int, int]:
        """Redis's TIME, for the clock offset gauge (not checked here): the epoch."""
        return 0, 0


class _Pipeline:
    def __init__(self, sink: list[tuple[str, dict[str, Any]]], markers: set[str]) -> None:
        self._sink, self._queued = sink, []  # type: ignore[var-annotated]
        self._markers, self._marked, self._replies = markers, set[str](), list[list[int]]()

    async def __aenter__(self) -> _Pipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def xadd(self, stream: str, fields: dict[str, Any], **_: Any) -> None:
        self._queued.append((stream, fields))

    def eval(self, _script: str, numkeys: int, *rest: Any) -> None:
        """The quarantine script (``quarantine._ONCE``): KEYS the stream, the set of what it holds (and input
        streams, never named here: the sim's facts come by call); ARGV a header (MAXLEN, ...), then per fact
        ``_PER_FACT`` values, its digest first and its entry's field names and values last."""
        stream, argv, reply = rest[0], rest[numkeys:], []
        values = argv[len(argv) % _PER_FACT:]  # the header is shorter than a fact's values
        for at in range(0, len(values), _PER_FACT):
            digest, flat = values[at], values[at + _PER_FACT - 2 * _FIELDS:at + _PER_FACT]
            new = digest not in self._markers and digest not in self._marked
            if new:
                self._queued.append((stream, dict(zip(flat[0::2], flat[1::2], strict=True))))
                self._marked.add(digest)
            reply.append(int(new))
        self._replies.append(reply)

    async def execute(self) -> list[list[int]]:
        await asyncio.sleep(0)
        self._sink += self._queued
        self._markers |= self._marked
        return self._replies
