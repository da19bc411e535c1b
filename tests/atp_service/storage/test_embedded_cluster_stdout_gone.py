"""``make cluster`` (``embedded_cluster --serve``) whose stdout's reader went away (``| head``, ``| tee``, tee gone):
its lines are lost, never the service processes it started. No Redis needed: the children are stand-ins."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from atp_service.storage import embedded_cluster


class _Gone:
    """A stdout whose reader has gone: every write is EPIPE."""

    def write(self, _text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self) -> int:
        raise OSError("no file descriptor")


class _Child:
    started: list[_Child] = []

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        self.pid, self.code = 4242 + len(self.started), None
        self.started.append(self)

    def poll(self) -> int | None:
        return self.code


def test_service_processes_started_with_stdout_gone_are_handed_back_to_be_stopped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect: ``_serve`` said each process started with a ``print`` that raised BrokenPipeError after the processes
    were started, before they were handed back: ``main``'s ``finally`` never knew them, the Redis Cluster was stopped
    under them and they served on, their ports held, orphaned. Its lines are lost; the processes handed back."""
    monkeypatch.setattr(embedded_cluster.subprocess, "Popen", _Child)
    monkeypatch.setattr(embedded_cluster.sys, "stdout", _Gone())
    _Child.started.clear()
    served = embedded_cluster._serve("redis://127.0.0.1:1", 2)
    assert [s.process for s in served] == _Child.started and len(served) == 2
    for child in _Child.started:
        child.code = 0
    assert embedded_cluster._watch(served, threading.Event()) == 1  # each exit said to nobody, then the end
