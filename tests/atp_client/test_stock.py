"""atpctl stock load: an ERP extract as COUNT facts — a re-load is a no-op, a newer extract wins
(E1, E5, E8), a bad row is reported and never stops the load."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import grpc
import pytest

from atp_client import AtpClient, _extract, ctl, timestamp
from atp_client._extract import LAST_TIME_MS, Extract, HeaderError
from atp_client._stock import LoadStopped, load, parse_time
from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from reservation._validate import LAST_EVENT_TIME_MS
from tests.conftest import ServiceFactory
from tests.waiting import until

T0 = parse_time("2026-11-28T06:00:00Z")


Row = tuple[int, str, str, int, int]


def _read(data: bytes, as_of: int | None = T0) -> tuple[list[Row], list[tuple[int, str]], int]:
    """(line, sku, location, on_hand, as_of) per good row, (line, reason) per rejected row, rows read."""
    good: list[Row] = []
    bad: list[tuple[int, str]] = []
    rows = 0
    for block in Extract(io.BytesIO(data), as_of):
        rows += block.rows_read
        bad += [(r.line, r.reason) for r in block.rejected]
        good += [(int(line), block.skus[s], block.locations[loc], int(q), int(t)) for line, s, loc, q, t in zip(
            block.lines, block.sku_index, block.location_index, block.on_hand, block.as_of, strict=True)]
    return good, sorted(bad), rows


@pytest.fixture(params=["arrow", "csv"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of reading a piece: Arrow's parser and Python's csv (what a piece with an odd line
    takes, and every piece without pyarrow)."""
    if request.param == "csv":
        monkeypatch.setattr(_extract, "pa", None)
    return str(request.param)


def test_rows_become_counts_and_bad_rows_are_kept_aside(reader: str) -> None:
    text = ("sku,location,on_hand,as_of\n"
            "A,S1,5,\n"                      # the file's time
            "B,S1,7,2026-11-28T07:00:00Z\n"  # its own time
            "C,S1,-1,\n"                     # negative
            ",S1,3,\n"                       # no sku
            " A ,S2,4,\n"                    # spaces around a name are not part of it
            "E,S1,2,yesterday\n"             # a time nobody can read
            "F,S1,2,2026-13-01T00:00:00Z\n"  # no such month
            "G,S1,2,2026-11-28T07:00:00\n"   # no time zone
            "H,S1,2,-5\n")                   # neither RFC 3339 nor epoch ms
    good, bad, rows = _read(text.encode())
    assert good == [(2, "A", "S1", 5, T0), (3, "B", "S1", 7, T0 + 3_600_000), (6, "A", "S2", 4, T0)]
    assert rows == 9
    # every reason names its column, as the service's do: a time's fault is the as_of column's
    assert [(line, reason.split(":")[0]) for line, reason in bad] == [
        (4, "on_hand"), (5, "sku and location"), (7, "as_of"), (8, "as_of"), (9, "as_of"), (10, "as_of")]
    assert "'yesterday'" in dict(bad)[7] and "time zone" in dict(bad)[9]  # and still what is wrong with it


def test_an_odd_line_sends_its_piece_row_by_row_with_every_line_number_right() -> None:
    text = "sku,location,on_hand\nA,S1,5\nD,S1,many\n\nB,S1,2,extra\nC,S1,1\nE,S1,0x5\nF,S1,99999999999999999999\n"
    good, bad, rows = _read(text.encode())
    assert [(line, sku) for line, sku, *_ in good] == [(2, "A"), (5, "B"), (6, "C")]
    assert bad == [(3, "on_hand: not an integer (at most 18 digits): 'many'"),
                   (7, "on_hand: not an integer (at most 18 digits): '0x5'"),
                   (8, "on_hand: not an integer (at most 18 digits): '99999999999999999999'")]
    assert rows == 6


def test_the_pieces_of_a_big_file_keep_their_line_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_extract, "PIECE_BYTES", 64)
    text = "sku,location,on_hand\n" + "".join(f"S{n},L{n % 3},{n if n != 77 else 'x'}\n" for n in range(200))
    good, bad, rows = _read(text.encode())
    assert rows == 200 and bad == [(79, "on_hand: not an integer (at most 18 digits): 'x'")]
    assert all(line == n + 2 and sku == f"S{n}" and q == n for line, sku, _, q, _ in good for n in [line - 2])


def test_a_file_without_the_columns_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(HeaderError, match="missing column"):
        Extract(io.BytesIO(b"sku,qty\nA,1\n"), T0)


def test_an_epoch_time_past_int64_is_a_bad_row_not_the_end_of_the_load(reader: str) -> None:
    """An as_of of more digits than an int64 holds was read as a number, and putting it in the block's int64
    column raised OverflowError: the load ended on a traceback, naming no row, the rows of the pieces before
    it sent already. It is a row that cannot be read, like any other."""
    text = "sku,location,on_hand,as_of\nA,S1,5,\nB,S1,6,99999999999999999999\nC,S1,7,1795395600000\n"
    good, bad, rows = _read(text.encode())
    assert [(line, sku) for line, sku, *_ in good] == [(2, "A"), (4, "C")] and rows == 3
    assert [(line, reason.split(":")[0]) for line, reason in bad] == [(3, "as_of")]
    assert "99999999999999999999" in bad[0][1]
    with pytest.raises(ValueError, match="digits"):
        parse_time("9" * 19)  # --as-of too: a bad command line, not a traceback


def test_a_time_without_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        parse_time("2026-11-28T06:00:00")
    assert parse_time("1795395600000") == 1795395600000


@pytest.mark.parametrize("text", ["2026-11-28t06:00:00z", "2026-11-28T06:00:00z", "2026-11-28t07:00:00+01:00"])
def test_an_rfc3339_time_in_lower_case_is_the_same_time(text: str) -> None:
    """RFC 3339 (5.6) lets "T" and "Z" be "t" and "z": an extract written so (a database's
    lower-cased export) is the same moment, not every row rejected as "not a time"."""
    assert parse_time(text) == T0


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
        tonight = await load(atp, first, "erp", now - 60_000, batch=64, inflight=3, progress=None)
        assert tonight.as_dict() == {"rows": 500, "applied": 500, "unreadable": 0}  # the nightly resync: E1, E2
        got = await atp.availability([(f"S{n}", f"L{n % 7}") for n in range(500)])
        assert [p.on_hand for p in got] == list(range(500))
        older_again = await load(atp, newer, "erp", noon, batch=64, inflight=3, progress=None)
        assert older_again.as_dict() == {"rows": 500, "duplicate": 500, "unreadable": 0}  # superseded, still known


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
    assert report[2] == '4,C,L,"on_hand: a count must be within [0, 1000000] (limit max_quantity)"'  # by column
    got = await client.availability([("A", "L"), ("B", "L"), ("D", "L")])
    assert [p.on_hand for p in got] == [4, 0, 9]


def test_an_excel_export_a_bad_byte_and_a_blank_line_stop_nothing(tmp_path: Path) -> None:
    """A byte-order mark before the header, a row that is not UTF-8 and a blank line: the header
    is read, the bad row is reported alone, and every other row is a fact."""
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfSKU, Location ,on_hand\r\nA,L1,1\r\nB,Z\xfcrich,2\r\n\r\nC,L1,3\r\n")
    with path.open("rb") as handle:
        blocks = list(Extract(handle, T0))
    assert [block.skus[s] for block in blocks for s in block.sku_index] == ["A", "C"]
    rejected = [(r.line, r.location, r.reason) for block in blocks for r in block.rejected]
    assert rejected == [(3, "Z\\udcfcrich", "sku and location: not UTF-8")]
    assert sum(block.rows_read for block in blocks) == 3


def test_a_bad_byte_in_a_clean_piece_is_found_by_arrow_too(reader: str) -> None:
    good, bad, _ = _read(b"sku,location,on_hand\nA,L1,1\nB,Z\xfcrich,2\nC,L1,3\n")
    assert [sku for _, sku, *_ in good] == ["A", "C"] and bad == [(3, "sku and location: not UTF-8")]


async def test_an_extract_older_than_the_grace_window_is_reported_not_applied(start_service: ServiceFactory,
                                                                            tmp_path: Path) -> None:
    service, client = await start_service()
    now = service.clock.now_ms()
    await client.record_events([pb.Fact(event_id="sale", source="pos", kind=pb.FACT_KIND_SALE, sku="A", location="L",
                                        quantity=1, event_time=timestamp(now))])  # the shard's stream time: now
    late = tmp_path / "last-week.csv"
    late.write_text("sku,location,on_hand\nA,L,40\n")
    report = tmp_path / "last-week.csv.rejected.csv"
    async with AtpClient(f"127.0.0.1:{service.port}") as atp:
        summary = await load(atp, late, "erp", now - 7 * 24 * 3_600_000, batch=10, inflight=1, progress=None,
                             report=report)
    assert summary.as_dict() == {"rows": 1, "quarantined": 1, "unreadable": 0}
    assert [row.split(",")[3].split(":")[0] for row in report.read_text().splitlines()[1:]] == ["quarantined"]


@pytest.mark.parametrize("piece", [8, 16, 27, 40, 66, 72, 1 << 20])
def test_a_piece_never_ends_inside_a_quoted_line_break(reader: str, piece: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A piece is cut at a line break: one inside a quoted field is not the end of a row. Cut there,
    the row's tail was read as a row of its own (a count at a SKU nobody has: 'C"')."""
    monkeypatch.setattr(_extract, "PIECE_BYTES", piece)
    text = b'sku,location,on_hand\nA,L1,5\n"B\nC",L1,6\nD,"L\n2",7\nE,L3,"8"\n"F""G\nH",L1,9\n'
    good, bad, rows = _read(text)
    assert good == [(2, "A", "L1", 5, T0), (4, "B\nC", "L1", 6, T0), (6, "D", "L\n2", 7, T0), (7, "E", "L3", 8, T0),
                    (9, 'F"G\nH', "L1", 9, T0)]
    assert bad == [] and rows == 5


def test_a_quote_inside_a_plain_field_is_only_a_character(reader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inches in a SKU (PIPE 1/2"): a quote that does not open a field opens nothing, wherever pieces end."""
    monkeypatch.setattr(_extract, "PIECE_BYTES", 16)
    good, bad, _ = _read(b'sku,location,on_hand\nPIPE 1/2",L1,5\nB,L1,6\n"C""",L1,7\nD,L1,8\n')
    assert [(line, sku, q) for line, sku, _, q, _ in good] == [(2, 'PIPE 1/2"', 5), (3, "B", 6), (4, 'C"', 7),
                                                               (5, "D", 8)]
    assert bad == []


def test_a_header_naming_a_column_twice_is_refused() -> None:
    """Arrow's path read the first on_hand column and csv's the last: which count a row loaded
    depended on whether its piece had an odd line."""
    with pytest.raises(HeaderError, match="on_hand"):
        Extract(io.BytesIO(b"sku,location,on_hand,on_hand\nA,L1,5,7\n"), T0)
    with pytest.raises(HeaderError, match="as_of"):
        Extract(io.BytesIO(b"sku,location,on_hand,as_of,AS_OF\nA,L1,5,1,2\n"), T0)


def test_a_call_of_long_names_stays_within_a_message() -> None:
    """SKUs of up to max_id_length (128 bytes) are valid: 50,000 distinct ones (the default --batch)
    made a 7 MB request, which the service (4 MiB messages) refused whole, stopping the load."""
    import numpy as np

    from atp_client._extract import Block
    from atp_client._stock import requests

    n = 50_000
    skus = [f"{i:08d}".ljust(128, "x") for i in range(n)]
    block = Block(np.arange(2, n + 2, dtype=np.int64), skus, np.arange(n, dtype=np.uint32), ["L1"],
                  np.zeros(n, dtype=np.uint32), np.ones(n, dtype=np.int64), np.full(n, T0, dtype=np.int64))
    calls = requests(block, "erp", 50_000)
    assert all(request.ByteSize() <= 4 << 20 for request, _ in calls)
    assert sum(len(lines) for _, lines in calls) == n  # every row, once, in order
    assert np.concatenate([lines for _, lines in calls]).tolist() == block.lines.tolist()


def test_the_times_remembered_stay_within_their_bound_whatever_the_file(reader: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An extract whose every row has its own as_of (each position counted at its own moment) is
    read with the parses of at most ``MAX_TIMES`` distinct values remembered: the memo of one per
    distinct value held a 10-million-row extract's every time string (~1.5 GB), while the rows
    themselves go a piece at a time."""
    rows = 3000
    text = "sku,location,on_hand,as_of\n" + "".join(f"S{n},L1,{n},{T0 + n}\n" for n in range(rows))
    monkeypatch.setattr(_extract, "PIECE_BYTES", 4096)  # several pieces: the bound holds across them
    monkeypatch.setattr(_extract, "MAX_TIMES", 64, raising=False)
    extract = Extract(io.BytesIO(text.encode()), T0)
    largest = 0
    times: list[int] = []
    for block in extract:
        largest = max(largest, len(extract._times))
        times += [int(t) for t in block.as_of]
    assert times == [T0 + n for n in range(rows)]  # every time still read right past the bound
    assert largest <= 64


class StoppedAfter(AtpClient):
    """A client of a real service that is stopped, for good, once ``answered`` LoadCounts calls
    were answered: the service going away mid-load at a point the test chooses."""

    def __init__(self, service: AtpService, answered: int) -> None:
        super().__init__(f"127.0.0.1:{service.port}", timeout_s=5.0)
        self.service, self.left = service, answered

    async def load_counts(self, request: pb.LoadCountsRequest) -> pb.LoadCountsResponse:
        if self.left == 0:
            await self.service.stop(grace_s=0.1)
        self.left -= 1
        return await super().load_counts(request)


async def test_a_load_cut_short_says_what_was_loaded_keeps_its_report_and_exits_unavailable(
        start_service: ServiceFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The service goes away after two calls of five were answered. The operator gets the counts
    of what was answered (applied, and the rows not answered: in doubt), the report of the rows
    rejected so far, the refusal's exit status (6: retry later), and the word that a re-load is
    safe — not a lone refusal line, the rejected rows of the answered calls lost with the rest."""
    service, _ = await start_service()
    extract = tmp_path / "erp.csv"
    extract.write_text("sku,location,on_hand\n" + "".join(f"S{n},L,{'x' if n == 1 else n}\n" for n in range(50)))
    args = argparse.Namespace(file=extract, source="erp", as_of=str(service.clock.now_ms() - 60_000), report=None,
                              batch=10, inflight=1, json=True)
    async with StoppedAfter(service, answered=2) as client:
        code = await ctl._stock_load(args, client)
    out, err = capsys.readouterr()
    assert code == 6, (out, err)
    # The call the service went away under is in doubt (10 rows); the 19 rows after it were never sent.
    assert json.loads(out) == {"rows": 50, "applied": 20, "unreadable": 1, "not_answered": 29, "not_sent": 19}, out
    assert "again" in err and "UNAVAILABLE" in err, err
    report = (tmp_path / "erp.csv.rejected.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in report[1:]] == ["3"], report


class RefusedWhileHeld(AtpClient):
    """A client of a real service whose shard of SKU ``A`` is held (paused): the call of ``A`` waits there, and the call
    of ``B`` is refused for good, by this client's own bound on a request's size, once that one is in the service's
    hands (``refused``: set then)."""

    def __init__(self, service: AtpService) -> None:
        super().__init__(f"127.0.0.1:{service.port}", timeout_s=60.0)
        self.service, self.refused = service, asyncio.Event()

    async def load_counts(self, request: pb.LoadCountsRequest) -> pb.LoadCountsResponse:
        if list(request.skus) == ["B"]:
            await until(lambda: self.service._servicer.drain.active == 1, "the call of A in the service's hands")
            self.max_request_bytes = 1  # its request past the bound: InvalidRequest, never sent, not retried
            try:
                return await super().load_counts(request)
            finally:
                self.refused.set()
        return await super().load_counts(request)


def awaiting(task: asyncio.Future[object]) -> list[str]:
    """The coroutines ``task`` is suspended in, outermost first (``Task.get_stack`` gives its outermost alone)."""
    names, coro = [], getattr(task, "get_coro", lambda: None)()
    while coro is not None and hasattr(coro, "cr_code"):
        names.append(coro.cr_code.co_name)
        coro = coro.cr_await
    return names


async def test_ctrl_c_while_a_refused_load_waits_for_its_calls_in_flight_still_tells_how_far_it_got(
        start_service: ServiceFactory, tmp_path: Path) -> None:
    """A call refused for good ends the load once the calls still in flight are answered (``patiently``: retried up to
    ``PATIENCE_S``). Ctrl-C during that wait raised the cancellation past the summary: atpctl said only
    "interrupted" — no rows answered or not, no refusal, no word that loading again is safe."""
    service, _ = await start_service()
    resume = await service.engine.actors[service.engine.place("A")].pause()
    extract = tmp_path / "erp.csv"
    extract.write_text("sku,location,on_hand\nA,L,1\nB,L,2\nC,L,3\n")
    try:
        async with RefusedWhileHeld(service) as client:
            loading = asyncio.ensure_future(load(client, extract, "erp", T0, 1, 2, None, tmp_path / "report.csv"))
            await client.refused.wait()
            # The load waits for the call of A alone (no ``launch`` under it): the refusal is in hand.
            await until(lambda: awaiting(loading)[-1] == "_load", "the load waiting for its call in flight")
            loading.cancel()  # Ctrl-C
            with pytest.raises(LoadStopped) as stopped:
                await loading
    finally:
        resume.set_result(None)
    assert stopped.value.error is not None and stopped.value.error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stopped.value.summary.as_dict() == {"rows": 3, "unreadable": 0, "not_answered": 3, "not_sent": 1}


BAD_ROWS = 25_000
"""Rows of an extract none of which can be loaded: about 10 MB of them held in memory at once."""


async def test_an_extract_of_bad_rows_is_reported_as_it_is_read_never_held_whole(
        start_service: ServiceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """An extract without an ``as_of`` column loaded without ``--as-of``: every row is rejected ("no time"). Each
    rejected row was held (about 400 bytes) until the load ended, then sorted into the report — 4 GB for an
    extract of 10 million rows, read a piece at a time otherwise, and no report at all for a load killed for its
    memory. Written to the report as they are read, the rows of one piece are held at most."""
    monkeypatch.setattr(_extract, "PIECE_BYTES", 16 << 10)  # about 900 rows a piece
    _, client = await start_service()
    extract = tmp_path / "no-times.csv"
    extract.write_text("sku,location,on_hand\n" + "".join(f"SKU-{n:06d},S{n % 50:02d},{n % 9}\n"
                                                           for n in range(BAD_ROWS)))
    args = argparse.Namespace(file=extract, source="erp", as_of=None, report=None, batch=1000, inflight=2, json=True)
    tracemalloc.start()
    try:
        code = await ctl._stock_load(args, client)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out, err = capsys.readouterr()
    assert code == 3 and json.loads(out) == {"rows": BAD_ROWS, "unreadable": BAD_ROWS}, (out, err)
    report = (tmp_path / "no-times.csv.rejected.csv").read_text().splitlines()
    assert len(report) == BAD_ROWS + 1 and report[1].startswith("2,SKU-000000,S00,as_of: no time"), report[:2]
    assert report[-1].startswith(f"{BAD_ROWS + 1},SKU-{BAD_ROWS - 1:06d},"), report[-1]
    assert peak < 4 << 20, f"{peak / 1e6:.1f} MB held at once for {BAD_ROWS} rows rejected"


@pytest.mark.parametrize("report", ["missing-dir/erp.rejected.csv", "."])
async def test_a_report_that_cannot_be_written_is_a_usage_error_before_any_row_is_sent(
        report: str, start_service: ServiceFactory, tmp_path: Path) -> None:
    """``--report`` in a directory that does not exist (or naming a directory) was found out at the first
    rejected row (here one the service refuses, beyond its max_quantity), the calls before it loaded: a
    traceback (exit 1), no summary, the rejected rows' report lost — or, for a directory, a traceback. Now a
    bad command line naming ``--report``, exit 2, nothing of the file sent."""
    service, client = await start_service()
    extract = tmp_path / "erp.csv"
    extract.write_text("sku,location,on_hand\n" + "".join(f"S{n},L,{n + 1}\n" for n in range(30)) + "BIG,L,2000000\n")
    done = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "atp_client.ctl", "--target", f"127.0.0.1:{service.port}", "--json", "stock", "load",
        str(extract), "--as-of", str(service.clock.now_ms() - 60_000), "--batch", "10", "--inflight", "1",
        "--report", str(tmp_path / report)], capture_output=True, text=True, timeout=60)
    got = await client.availability([("S0", "L"), ("S29", "L")])
    assert [p.on_hand for p in got] == [0, 0], (done.returncode, done.stderr)  # nothing of the file sent
    assert done.returncode == 2 and "argument --report:" in done.stderr, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr


def test_a_time_no_count_may_carry_is_a_bad_row_naming_it_where_the_file_is_read(reader: str) -> None:
    """An as_of past 9999-12-31 (epoch ms of 15 digits and more) or at or before 1970-01-01 was read as a time and
    sent, to be refused by the service ("ahead of the service clock", "must be set"): now the row is kept aside
    where it is read, its reason naming ``as_of`` and the bound it passes, and ``--as-of`` refused alike."""
    text = ("sku,location,on_hand,as_of\nA,S1,5,253402300799999\nB,S1,6,253402300800000\n"
            "C,S1,7,1970-01-01T00:00:00Z\nD,S1,8,1969-12-31T23:00:00Z\nE,S1,9,0\n")
    good, bad, rows = _read(text.encode())
    assert [(line, sku, at) for line, sku, _, _, at in good] == [(2, "A", LAST_EVENT_TIME_MS)] and rows == 5
    assert [line for line, _ in bad] == [3, 4, 5, 6]
    assert all(reason.startswith("as_of: ") and "not a time" not in reason for _, reason in bad), bad
    assert "9999-12-31" in dict(bad)[3] and all("1970-01-01" in dict(bad)[line] for line in (4, 5, 6)), bad
    with pytest.raises(ValueError, match="9999-12-31"):
        parse_time("253402300800000")  # --as-of too: a bad command line
    assert LAST_TIME_MS == LAST_EVENT_TIME_MS  # the service's own bound (the client imports none of it)
