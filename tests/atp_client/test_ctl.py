"""``atpctl`` as an operator runs it (a process of its own) against a real service on a real Redis."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from tests.conftest import ServiceFactory


def ctl(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "atp_client.ctl", "--target", target, *args],
                          capture_output=True, text=True, timeout=60)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def receipt(n: int, at_ms: int) -> str:
    return json.dumps({"eventId": f"in-{n}", "source": "wms", "kind": "FACT_KIND_RECEIPT", "sku": "IMP",
                       "location": "DC", "quantity": 1, "eventTime": iso(at_ms)})


async def test_an_events_file_with_a_line_that_cannot_be_read_is_not_half_imported(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    """A bad line far into the file must stop the import before anything is sent, not after the
    chunks before it were applied: the operator is told the file is refused, and it was."""
    service, client = await start_service()
    now = int(time.time() * 1000)
    facts = tmp_path / "facts.jsonl"
    lines = [receipt(n, now - 1000) for n in range(1500)]
    lines[1200] = lines[1200].replace('"quantity": 1', '"quantity": "one"')
    facts.write_text("\n".join(lines) + "\n")
    done = await asyncio.to_thread(ctl, f"127.0.0.1:{service.port}", "events", "import", str(facts))
    assert done.returncode != 0 and f"{facts}:1201:" in done.stderr and "quantity" in done.stderr, done.stderr
    (position,) = await client.availability([("IMP", "DC")])
    assert position.on_hand == 0  # nothing of the refused file applied
