"""atpctl stock load: an ERP extract as COUNT facts — a re-load is a no-op, a newer extract wins
(E1, E5, E8), a bad row is reported and never stops the load."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path

import pytest

from atp_client import AtpClient, timestamp
from atp_client._stock import LoadSummary, load, parse_time, rows
from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.conftest import ServiceFactory

T0 = parse_time("2026-11-28T06:00:00Z")


def test_rows_become_counts_with_stable_identities_and_bad_rows_are_kept_aside() -> None:
    text = ("sku,location,on_hand,as_of\n"
            "A,S1,5,\n"                      # the file's time
            "B,S1,7,2026-11-28T07:00:00Z\n"  # its own time
            "C,S1,-1,\n"                     # negative
            "D,S1,many,\n"                   # not a number
            ",S1,3,\n"                       # no sku
            "E,S1,2,yesterday\n")            # a time nobody can read
    summary = LoadSummary()
    facts = list(rows(io.StringIO(text), "erp", T0, summary))
    assert [(line, f.sku, f.quantity, f.event_id, f.source, f.kind) for line, f in facts] == [
        (2, "A", 5, f"count@{T0}", "erp", pb.FACT_KIND_COUNT), (3, "B", 7, f"count@{T0 + 3_600_000}", "erp",
                                                                   pb.FACT_KIND_COUNT)]
    assert summary.rows == 6
    assert [(r.line, r.reason.split(":")[0]) for r in summary.rejected] == [
        (4, "on_hand"), (5, "on_hand"), (6, "sku and location"), (7, "Invalid isoformat string")]


def test_a_file_without_the_columns_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match="missing column"):
        list(rows(io.StringIO("sku,qty\nA,1\n"), "erp", T0, LoadSummary()))


def test_a_time_without_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        parse_time("2026-11-28T06:00:00")
    assert parse_time("1795395600000") == 1795395600000


async def test_a_reload_is_a_no_op_and_a_newer_extract_wins_in_any_order(start_service: ServiceFactory,
                                                                         tmp_path: Path) -> None:
    service, _ = await start_service()
    now = service.clock.now_ms()
    morning, noon = now - 6 * 3_600_000, now - 3_600_000
    first, newer = tmp_path / "monday.csv", tmp_path / "monday-noon.csv"
    first.write_text("sku,location,on_hand\n" + "".join(f"S{n},L{n % 7},{n}\n" for n in range(500)))
    newer.write_text("sku,location,on_hand\n" + "".join(f"S{n},L{n % 7},{n + 1}\n" for n in range(500)))
    async with AtpClient(f"127.0.0.1:{service.port}") as atp:
        loaded = await load(atp, newer, "erp", noon, batch=64, inflight=3, progress=None)
        assert loaded.as_dict() == {"rows": 500, "applied": 500, "unreadable": 0}
        older = await load(atp, first, "erp", morning, batch=64, inflight=3, progress=None)  # arrives late
        assert older.as_dict() == {"rows": 500, "absorbed": 500, "unreadable": 0}  # E5: an older count changes nothing
        again = await load(atp, newer, "erp", noon, batch=100, inflight=2, progress=None)
        assert again.as_dict() == {"rows": 500, "duplicate": 500, "unreadable": 0}  # E8: the same facts
        got = await atp.availability([(f"S{n}", f"L{n % 7}") for n in range(500)])
    assert [p.on_hand for p in got] == [n + 1 for n in range(500)]


async def test_the_command_reports_rejected_rows_and_loads_the_rest(start_service: ServiceFactory,
                                                                    tmp_path: Path) -> None:
    service, client = await start_service()
    extract = tmp_path / "erp.csv"
    extract.write_text("sku,location,on_hand\nA,L,4\nB,L,x\nC,L,2000000\nD,L,9\n")
    # C is refused by the service (its max_quantity is a setting): the client checks only what is unreadable
    as_of = str(service.clock.now_ms() - 60_000)
    done = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "atp_client.ctl", "--target", f"127.0.0.1:{service.port}", "--json",
        "stock", "load", str(extract), "--as-of", as_of], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr  # some rows were rejected
    assert '"applied": 2' in done.stdout and '"unreadable": 1' in done.stdout and '"invalid": 1' in done.stdout
    report = (tmp_path / "erp.csv.rejected.csv").read_text().splitlines()
    assert report[0] == "line,sku,location,reason" and [r.split(",")[0] for r in report[1:]] == ["3", "4"]
    assert report[2] == '4,C,L,"quantity: COUNT must be within [0, 1000000]"'  # the service's reason, by field
    got = await client.availability([("A", "L"), ("B", "L"), ("D", "L")])
    assert [p.on_hand for p in got] == [4, 0, 9]


def test_an_excel_export_a_bad_byte_and_a_blank_line_stop_nothing(tmp_path: Path) -> None:
    """A byte-order mark before the header, a row that is not UTF-8 and a blank line: the header
    is read, the bad row is reported alone, and every other row is a fact."""
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfSKU, Location ,on_hand\r\nA,L1,1\r\nB,Z\xfcrich,2\r\n\r\nC,L1,3\r\n")
    summary = LoadSummary()
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as lines:
        facts = list(rows(lines, "erp", T0, summary))
    assert [f.sku for _, f in facts] == ["A", "C"]
    rejected = [(r.line, r.location, r.reason) for r in summary.rejected]
    assert rejected == [(3, "Z\\udcfcrich", "sku and location: not UTF-8")]
    assert (summary.rows, summary.unreadable) == (3, 1)


async def test_an_extract_older_than_the_grace_window_is_reported_not_applied(start_service: ServiceFactory,
                                                                            tmp_path: Path) -> None:
    service, client = await start_service()
    now = service.clock.now_ms()
    await client.record_events([pb.Fact(event_id="sale", source="pos", kind=pb.FACT_KIND_SALE, sku="A", location="L",
                                        quantity=1, event_time=timestamp(now))])  # the shard's stream time: now
    late = tmp_path / "last-week.csv"
    late.write_text("sku,location,on_hand\nA,L,40\n")
    async with AtpClient(f"127.0.0.1:{service.port}") as atp:
        summary = await load(atp, late, "erp", now - 7 * 24 * 3_600_000, batch=10, inflight=1, progress=None)
    assert summary.as_dict() == {"rows": 1, "quarantined": 1, "unreadable": 0}
    assert [r.reason.split(":")[0] for r in summary.rejected] == ["quarantined"]
