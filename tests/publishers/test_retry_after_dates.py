"""A ``Retry-After`` HTTP date is read in GMT whatever its form: RFC 9110 says every HTTP date is, the obsolete asctime
form carrying no zone at all. Read in the host's local time, a destination's 30 s ask became hours (cut to
``max_wait_s``) west of Greenwich and nothing east of it. Real local HTTP server, an injected wall clock, the test
process's time zone set to one five hours west of UTC."""

from __future__ import annotations

import time
from collections.abc import Iterator
from email.utils import formatdate

import pytest

from publishers import HttpSettings
from publishers._http import Http
from tests.publishers.http_helpers import Clock, serve


@pytest.fixture
def west_of_greenwich(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "EST5")  # POSIX: UTC-5, no tz database needed
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("form", ["asctime", "rfc850", "imf-fixdate"])
async def test_a_retry_after_date_without_a_zone_is_read_in_gmt(west_of_greenwich: None, form: str) -> None:
    clock = Clock()
    at = clock.now + 30
    date = {"asctime": time.asctime(time.gmtime(at)),  # 'Fri Jan 15 08:00:30 2027': no zone
            "rfc850": time.strftime("%A, %d-%b-%y %H:%M:%S GMT", time.gmtime(at)),
            "imf-fixdate": formatdate(at, usegmt=True)}[form]
    answers = [(503, {"Retry-After": date}, b"busy"), (200, {}, b"")]
    with serve(lambda path, headers, body: answers.pop(0)) as url:
        http = Http(HttpSettings(max_wait_s=600), sleep=clock.sleep, wall_s=clock)
        try:
            response = await http.post(f"{url}/hook", b"{}", dict)
        finally:
            await http.close()
    assert response.status_code == 200
    assert clock.slept == [30.0], (date, clock.slept)
