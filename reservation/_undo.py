"""How a change is taken back before its log entry is durable (a failed append, R7)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Undo = Callable[[], None] | tuple[Any, ...]
"""A callable, or ``(function, *args)``: a tuple is cheaper to build than a closure, which matters on
the fact hot path, where every fact carries one until its entry is durable."""


def run_undo(step: Undo) -> None:
    if type(step) is tuple:
        step[0](*step[1:])
    else:
        step()  # type: ignore[operator]
