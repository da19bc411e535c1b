"""A client's deadline (``timeout_s``) it cannot keep is refused where the client is made, naming it.

gRPC fails a call at once, ``DEADLINE_EXCEEDED``, unsent, where its deadline is not a time to come that gRPC can
hold: 0 or less, NaN, infinite (a natural way to ask for no deadline), or one so far that now plus it passes gRPC's
clock (past ~7.5e9 s from 2026). ``AtpClient`` took every such value and raised each call ``Retryable`` — a change
in doubt by docs/API.md, which a caller retries with the same ids and is told the same for ever, while nothing
was ever sent. Checked against the real service: the largest deadline taken is one a call keeps.
"""

from __future__ import annotations

import math

import pytest

from atp_client import AtpClient, RoutedClient
from atp_client._time import MAX_TIMEOUT_S
from atp_client.ctl import main
from atp_client.pb.atp.v1 import atp_pb2 as pb
from tests.atp_service.edge.test_api import stocked
from tests.conftest import ServiceFactory

NOT_KEPT = [0, -1, math.nan, math.inf, -math.inf, MAX_TIMEOUT_S * 2, 1e12, True, "10"]


@pytest.mark.parametrize("timeout_s", NOT_KEPT)
async def test_a_deadline_grpc_cannot_keep_is_refused_naming_timeout_s(timeout_s: object) -> None:
    with pytest.raises(ValueError, match=r"^timeout_s: "):
        AtpClient("127.0.0.1:1", timeout_s=timeout_s)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^timeout_s: "):
        RoutedClient("127.0.0.1:1", timeout_s=timeout_s)  # type: ignore[arg-type]


def test_atpctl_refuses_a_timeout_past_the_bound_as_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--target", "127.0.0.1:1", "--timeout", str(MAX_TIMEOUT_S * 2), "availability", "A@L"])
    assert exited.value.code == 2 and "argument --timeout:" in capsys.readouterr().err


async def test_the_longest_deadline_taken_is_kept_by_a_call(start_service: ServiceFactory) -> None:
    service, client = await stocked(start_service)
    async with AtpClient(f"127.0.0.1:{service.port}", timeout_s=MAX_TIMEOUT_S) as far:
        answer = await far.reserve("r-far", [("A", "S1", 1)])
    assert answer.state == pb.RESERVATION_STATE_HELD
    assert (await client.get_reservation("r-far")).state == pb.RESERVATION_STATE_HELD


@pytest.mark.parametrize(("name", "value"), [("keepalive_s", 3e6), ("keepalive_timeout_s", 3e6),
                                             ("keepalive_s", 1e12), ("keepalive_timeout_s", math.inf)])
async def test_a_keepalive_past_what_grpc_holds_is_refused_naming_it(name: str, value: float) -> None:
    """gRPC takes its keepalive options as milliseconds in a C int: past 2**31 - 1 (~24.8 days) the channel was
    not made, ``OverflowError: value too large to convert to int``, naming nothing."""
    with pytest.raises(ValueError, match=rf"^{name}: "):
        AtpClient("127.0.0.1:1", **{name: value})  # type: ignore[arg-type]
