"""A hook told of every routes read (``Membership.on_routes``: the owner watch of forwarded calls) that fails
(a bug): said, and the balance goes on — free groups taken, excess handed over (liveness)."""

from __future__ import annotations

import logging

import pytest

from atp_service.edge.routing import RoutingTable
from tests.atp_service.app.test_processes import SHARDS, owned, processes, start_process
from tests.conftest import ServiceFactory
from tests.waiting import until

__all__ = ["start_process"]  # the fixture, used here by name


async def test_a_failing_routes_hook_is_said_and_the_groups_of_a_process_gone_are_taken_all_the_same(
        start_process: ServiceFactory, caplog: pytest.LogCaptureFixture) -> None:
    """Each balance tells its routes read to the ``on_routes`` hooks before it plans anything; a hook raising (a bug
    in it) ended the balance there, every balance, so the process took no free group and handed none over for as
    long as the bug lasted: a stopped process's groups stayed served by none (liveness). Here the other process
    stops (its groups handed over, free): the first takes them all the same, the hook's failure said."""
    (a, _), (b, _) = await processes(start_process, 2)
    assert a.membership is not None

    def failing(table: RoutingTable) -> None:
        raise RuntimeError("a bug in a routes hook")

    a.membership.on_routes.insert(0, failing)
    await b.stop(grace_s=0.1)
    await until(lambda: owned(a) == set(range(SHARDS)), "the stopped process's groups taken by the other", 20)
    said = [r for r in caplog.records if getattr(r, "event", "") == "routes_hook_failed"]
    assert said and said[0].levelno == logging.ERROR, "the hook's failure said"
