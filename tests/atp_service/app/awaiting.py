"""Where a pending asyncio task waits, for a fuzzer's finding of a wedge: each coroutine frame of its await chain,
outermost first, down to the future it waits on, followed into the tasks and gathers it waits for.
``Task.print_stack`` shows a suspended task's outermost frame only (Python 3.11): "awaiting its work", not where."""

from __future__ import annotations

import asyncio
from typing import Any

DEPTH = 6
"""Tasks followed into, one waiting on the next, before the chain is cut."""


def awaiting(task: asyncio.Future[Any], indent: str = "  ", depth: int = DEPTH) -> str:
    """``task``'s await chain (see the module's text); a future that is no task is named as it is."""
    if not isinstance(task, asyncio.Task):
        return f"{indent}{task!r}"
    lines = [f"{indent}{task.get_name()}: {'done' if task.done() else 'pending'}"]
    awaitable: Any = task.get_coro()
    while awaitable is not None:  # a coroutine's frames; a generator-based awaitable's (``__await__``) too
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is not None:
            lines.append(f"{indent}  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    waiter = getattr(task, "_fut_waiter", None)  # the future it waits on (CPython's Task, C and Python alike)
    if waiter is None:
        return "\n".join(lines)
    if depth <= 0:
        return "\n".join([*lines, f"{indent}  waits on {waiter!r} (not followed further)"])
    children = getattr(waiter, "_children", None)  # asyncio.gather's future: each of its own
    followed = [c for c in children if not c.done()] if children is not None else [waiter]
    lines.append(f"{indent}  waits on{' a gather of' if children is not None else ''}:")
    lines += [awaiting(f, indent + "    ", depth - 1) for f in followed]
    return "\n".join(lines)


def every_task_awaiting() -> str:
    """``awaiting`` for every task of the running loop."""
    return "\n".join(awaiting(task) for task in asyncio.all_tasks())
