"""The one-off clean-up docs/OPERATIONS.md gives ("Run keys left by an earlier version") for the quarantine run keys
an earlier version stranded — drawn with no name in ``runs.drawn_names_key``'s set (a process gone before its first
read, a consumer removed with its group) — run as written against a real redis-server: it names them, and the sweep
deletes the one whose address no live process has, fenced as every run swept (E8), keeping the live one's."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import redis.asyncio as aioredis

from atp_service.intake.departed import DepartedConsumers
from atp_service.intake.quarantine import QuarantineStream, drawn_key, run_key, written_key
from atp_service.intake.runs import SWEPT, drawn_names_key
from atp_service.intake.unread import answered_key, trimmed_unread_key

OPERATIONS = Path(__file__).resolve().parents[3] / "docs" / "OPERATIONS.md"
STREAM, GROUP, QUARANTINE = "atp:in:pos", "atp", "atp:quarantine"  # the defaults the runbook's command names
GONE, LIVE = "atp-1@10.0.0.3:1", "atp-2@10.0.1.1:1"


def _runbook_command() -> str:
    """The shell block after the runbook's "Run keys left by an earlier version"."""
    text = OPERATIONS.read_text()
    at = text.find("**Run keys left by an earlier version.**")
    assert at >= 0, "OPERATIONS.md gives no clean-up of the run keys an earlier version stranded"
    block = re.search(r"```sh\n(.*?)```", text[at:], re.S)
    assert block is not None, "no command given"
    return block[1]


async def test_the_runbooks_clean_up_has_the_sweep_delete_the_run_keys_an_earlier_version_stranded(
        redis_url: str) -> None:
    r = aioredis.Redis.from_url(redis_url)
    names = drawn_names_key(written_key(QUARANTINE), GROUP)
    try:
        await r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        for name in (GONE, LIVE):  # drawn as an earlier version drew: no name in the set
            await QuarantineStream(QUARANTINE, 10).run_of(r, GROUP, name)
        await r.delete(names)
        sweep = DepartedConsumers(r, [STREAM], GROUP, LIVE, lambda: {"10.0.1.1:1"}, 0, quarantine=QUARANTINE)
        assert await sweep.sweep() == [], "named nowhere: never found"
        shell = await asyncio.create_subprocess_exec(  # as an operator runs it, its redis-cli at the test's server
            "bash", "-euo", "pipefail", "-c",
            'redis-cli() { command redis-cli -u "$URL" "$@"; }\n' + _runbook_command(),
            env={**os.environ, "URL": redis_url})
        assert await shell.wait() == 0
        assert await sweep.sweep() == [GONE]
        assert await r.exists(run_key(QUARANTINE, GROUP, GONE)) == 0, "its run key swept"
        assert await r.zscore(drawn_key(QUARANTINE, GROUP, GONE), SWEPT) == 1, "its run recorded swept (E8)"
        assert await r.exists(run_key(QUARANTINE, GROUP, LIVE)) == 1, "the live process's kept"
        assert await r.smembers(names) == {LIVE.encode()}
        assert await r.exists(answered_key(trimmed_unread_key(STREAM, GROUP, GONE))) == 0
    finally:
        await r.aclose()
