"""Helpers of the engine tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until_turns(condition: Callable[[], bool], what: str, turns: int = 500) -> None:
    """Let the event loop turn until ``condition()`` holds; fail naming ``what`` after ``turns``
    turns (a bound counted in turns, not in time: nothing here waits for a clock)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(what)
