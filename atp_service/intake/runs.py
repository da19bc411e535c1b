"""A consumer's quarantine run (``QuarantineStream.run_of``): drawn, leased, in one script that marks the consumer
answered (``DRAW``), and found swept with its consumer (``swept``) — ``intake/departed.py`` deletes the run key of a
consumer it takes for gone, the highest so deleted kept beside (``quarantine.swept_runs_key``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from atp_service.storage.scripts import ACL_LUA

# KEYS: the consumer's run key, the highest run swept (``swept_runs_key``), its answered mark (``unread.answered_key``).
# ARGV: the mark's life (ms). Returns the run drawn, above both keys'. Leased, a sweeper not yet seeing the process
# back at its address live took its consumer (idle: it draws before it reads) for gone and deleted the run it had just
# drawn: a write of a run before, landing late, took the key missing for one Redis lost and wrote and acknowledged an
# entry pending to the process back (E8). The mark, set with the draw, keeps the consumer (``departed.py``) for
# ``claim_idle_ms``, by which the process is seen live — not always (its members entry lapsed, holding no group; Redis
# before 7.2 keeps a consumer's idle time at a read that delivers nothing): a run swept all the same is refused for
# good by the write (``quarantine._ONCE``), and drawn again (``QuarantineStream.keep_run``).
DRAW = ACL_LUA + """
for k = 1, 3 do
  local kind = redis.call('TYPE', KEYS[k])['ok']
  if kind ~= 'string' and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' holds a ' .. kind .. ', not a string: no run drawn')
  end
end
local swept = redis.call('GET', KEYS[2])
if swept and not tonumber(swept) then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' holds no run: no run drawn')
end
local refused = denied({{'INCR', KEYS[1]}, {'SET', KEYS[1], '1'}, {'SET', KEYS[2], '0'},
  {'SET', KEYS[3], '1', 'PX', '1'}, {'TIME'}})
if refused then return refused end
local run = redis.call('INCR', KEYS[1])  -- a run key holding no number: an error, nothing written
if not swept then  -- there for every write naming it (``_ONCE``): on a migrating slot's source, one gone fails it
  redis.call('SET', KEYS[2], '0')
end
if swept and run <= tonumber(swept) then
  run = tonumber(swept) + 1
  redis.call('SET', KEYS[1], run)
end
local t = redis.call('TIME')
redis.call('SET', KEYS[3], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), 'PX', ARGV[1])
return run
"""


async def draw(script: Any, keys: list[str], answered_ms: int, lost: dict[Any, int], at: Any) -> int:
    """A run drawn (``script``: ``DRAW``); its answer lost (a timeout, a cancel), counted in ``lost`` at ``at``: that
    draw may land yet, after the one retried, moving the run key past the run in use (``swept``)."""
    lost[at] = lost.get(at, 0) + 1
    run = int(await script(keys=keys, args=[answered_ms]))
    lost[at] -= 1
    return run


async def swept(client: Any, run_key: str, swept_key: str, run: int, lost: dict[Any, int], at: Any) -> str | None:
    """Why ``run`` (drawn at ``run_key``) is one the write script refuses for good: deleted by a sweep (its key
    gone and the highest swept at or above it — never a key Redis lost, gone back to before the draw, where the
    highest swept is below the run drawn above it), or its key moved past it by this process's own draws whose answers
    were lost (``lost[at]`` of them, less those found landed), landing after their retries' (a run before, to the
    script: every write of it refused while it ran) — not further: a key moved past those by another's draw under the
    name (a process started at this one's address while this one was paused past its lease) is that one's fence, not
    this one's to lift. None: kept;
    else ``"swept"`` or ``"moved past"`` (logged: ``quarantine_run_drawn_again``, ``QuarantineStream.keep_run``)."""
    held = await client.get(run_key)
    if held is None:
        highest = await client.get(swept_key)  # read after: a sweep only raises it
        return "swept" if highest is not None and run <= int(highest) else None
    if not run < int(held) <= run + lost.get(at, 0):  # moved further: not its own lost draws, whatever came of them
        return None
    lost[at] -= int(held) - run  # those landed, each lands once: a draw past the run drawn again now is another's
    return "moved past"


def tell(again: dict[Any, tuple[int, str]], at: Any, now: int, told: Callable[[int, int, str], None]) -> int:
    """``now``, the run drawn at ``at``; the run before it (``again``: found refused for good, ``swept``) ``told``
    (run before, run now, why) once, here: kept till a draw is answered — one whose answer was lost (a timeout, a
    cancel) drew nothing known, and the next sweep round's tells it (``QuarantineStream.keep_run``)."""
    if (before := again.pop(at, None)) is not None:
        told(before[0], now, before[1])
    return now
