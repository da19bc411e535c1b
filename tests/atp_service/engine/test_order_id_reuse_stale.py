"""An order's id reserved again once its first order is no longer remembered (R5), the first order's part at group 1
back CONFIRMED in the second's place (its group back from data older than the second order's part, R7): a copy of a
part its order resolved before it was forgotten (``_order_losses.stale``), its units committed for no order. The
second order's steps that meet it release it, never leaving its units committed for good (Q3, R3, R5)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from atp_service.engine import parts
from atp_service.engine.losses import Nowhere, Told
from reservation import FailedPrecondition, Reason, State, Unavailable
from reservation import _orders as orders
from tests.atp_service.engine.helpers import running
from tests.atp_service.engine.order_reuse import group_1_back, reserved_again
from tests.atp_service.engine.test_order_sagas import Rig


@pytest.fixture
async def rig() -> Any:
    async with running(Rig()) as started:
        yield started


async def back_with_the_first_order_confirmed(rig: Rig, confirm_second: bool) -> None:
    """``order_reuse.reserved_again`` then ``group_1_back``: the first order's part CONFIRMED at group 1 (3 committed),
    last changed long before the second order opened (``stale``)."""
    await group_1_back(rig, *await reserved_again(rig, confirm_second))
    assert rig.quantities()[1] == (0, 3)


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "order_part_stale_released"]


async def test_a_confirmed_order_s_part_is_made_again_over_another_order_s_stale_confirmed_one_Q3_R5(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """Defect (found by review): the other order's CONFIRMED part was kept (``commit_again``), its 3 units committed
    for good — its order was resolved and forgotten, so nothing would ever release or ship them — and the order's own
    unit there committed nowhere. It is a stale copy: released, the order's part made over it, its unit committed."""
    await back_with_the_first_order_confirmed(rig, confirm_second=True)
    shown = await rig.run(rig.engine.get_reservation("o"))
    assert shown.state == State.CONFIRMED
    assert rig.quantities() == [(0, 3), (0, 1)], "another order's units committed for good, this order's nowhere"
    assert [line.committed for line in rig.part("o", 1).lines] == [1]
    assert len(said(caplog)) == 1, said(caplog)
    await rig.run(rig.engine.release("o", (), ""))
    assert rig.quantities() == [(0, 0), (0, 0)]


async def test_a_held_order_s_release_releases_another_order_s_stale_confirmed_part_Q3_R5(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """Defect (found by review): the order's whole Release dropped its share to the other order's CONFIRMED part
    (``shares_for``): the order RELEASED, and those 3 units committed for good, no order's."""
    await back_with_the_first_order_confirmed(rig, confirm_second=False)
    assert (await rig.run(rig.engine.release("o", (), ""))).state == State.RELEASED
    assert rig.quantities() == [(0, 0), (0, 0)], "another order's units committed for good"
    assert rig.part("o", 1).state == State.RELEASED
    assert len(said(caplog)) == 1, said(caplog)


async def test_a_held_order_given_up_on_its_confirm_releases_another_order_s_stale_confirmed_part_Q3_R5(
        rig: Rig) -> None:
    """Defect (found by review): the order given up whole on its Confirm (its part at group 1 gone) kept the other
    order's CONFIRMED part there (``give_up_part``): 3 units committed for good, no order's."""
    await back_with_the_first_order_confirmed(rig, confirm_second=False)
    with pytest.raises(FailedPrecondition, match=r"shard groups \[1\] is gone"):
        await rig.run(rig.engine.confirm("o"))
    assert rig.quantities() == [(0, 0), (0, 0)], "another order's units committed for good"
    assert (await rig.run(rig.engine.get_reservation("o"))).state == State.EXPIRED


class EarlierStep(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """A step as a process of the release before a Release only as read (``_orders.AS_READ``) reads it."""

    group: int
    step: (parts.ReservePart | parts.ApplyShare | parts.ReadPart | parts.GiveUpPart | parts.CommitPart
           | parts.ResolveOrder | parts.SettleOrder)


@pytest.mark.parametrize("change", ["release", "confirm"])
async def test_a_release_only_as_read_is_refused_by_a_process_of_an_earlier_release_never_run_by_id_alone_Q3(
        rig: Rig, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    """Defect (found by review): the share releasing another order's stale part only as read (its change's, or its
    giving up's) went to the part's process as any share does, the condition in its operation id: a process of an
    earlier release (a rolling update) read it and released whatever part held the id — the order's own part made
    over it since included (Q3). A step of its own kind, which that process refuses whole (``INVALID_ARGUMENT``: the
    order goes on once every process runs one release); every other step is sent as before."""
    await back_with_the_first_order_confirmed(rig, confirm_second=False)
    run_part, sent = parts.run_part, []

    async def sending(engine: Any, group: int, step: Any) -> Any:
        sent.append(msgspec.msgpack.encode(parts.StepRequest(group, step)))
        return await run_part(engine, group, step)

    monkeypatch.setattr(parts, "run_part", sending)
    if change == "release":
        await rig.run(rig.engine.release("o", (), ""))
    else:
        with pytest.raises(FailedPrecondition):
            await rig.run(rig.engine.confirm("o"))
    assert rig.quantities() == [(0, 0), (0, 0)]
    steps = [msgspec.msgpack.decode(request, type=parts.StepRequest).step for request in sent]
    as_read = [request for request, step in zip(sent, steps, strict=True) if isinstance(step, parts.ApplyShare)
               and step.share.operation_id.startswith(orders.AS_READ)]
    assert len(as_read) == 1
    earlier = msgspec.msgpack.Decoder(EarlierStep)
    with pytest.raises(msgspec.ValidationError):
        earlier.decode(as_read[0])
        pytest.fail("an earlier release reads it: a release by the part's id alone")
    assert all(earlier.decode(request) for request in sent if request not in as_read)


def test_each_order_found_committed_nowhere_is_counted_once_while_remembered() -> None:
    """``Told.first``: bounded — the oldest key forgotten past ``most``, a key seen again kept as the last seen."""
    once = Told(2)
    assert [once.first(key) for key in ("a", "a", "b", "a", "c", "b", "a")] == [
        True, False, True, False, True, True, True]  # b forgotten for c, then a for b


def test_the_orders_committed_nowhere_now_are_bounded_and_each_counted_once_while_remembered() -> None:
    """``Nowhere`` (``atp_orders_committed_nowhere``): an order held from being found until gone, each counted once
    while remembered (again once found so after it was gone); the oldest found forgotten past ``most`` (the gauge
    shows the bound, never more); those whose home this process no longer serves forgotten (``keep``: their next
    owner counts them)."""
    now = Nowhere(2)
    assert [now.found(key) for key in ("a", "a", "b")] == [True, False, True]
    assert list(now) == ["a", "b"]
    now.found("c")
    assert list(now) == ["b", "c"], "bounded: the oldest found forgotten"
    now.gone("b")
    now.gone("b")  # gone twice: nothing
    assert list(now) == ["c"]
    assert now.found("b") is True, "found so again after it was not: said and counted again"
    now.keep(lambda order_id: order_id != "c")
    assert list(now) == ["b"]
    assert now.found("c") is False, "handed over and taken back: counted once while remembered"


async def test_a_stale_release_refused_by_a_process_of_an_earlier_release_is_said_once_not_at_each_read_Q3(
        rig: Rig, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect (found by review): ``order_part_stale_released`` is said as the release only as read is sent; while a
    process of an earlier release refuses that step (``share-as-read``: for a whole rolling update) each read, change
    and housekeeping pass sent it again and said it again, an ERROR per read and poll saying a part released that was
    not. Said once; the release carried through once that process runs this release."""
    await back_with_the_first_order_confirmed(rig, confirm_second=False)
    run_part = parts.run_part

    async def earlier_release(engine: Any, group: int, step: Any) -> Any:
        if isinstance(step, parts.ReleaseAsRead):  # peers.step_sender: INVALID_ARGUMENT, the order goes on later
            raise Unavailable("peer: did not answer an order step (INVALID_ARGUMENT)", Reason.OUTCOME_UNKNOWN)
        return await run_part(engine, group, step)

    monkeypatch.setattr(parts, "run_part", earlier_release)
    with pytest.raises(Unavailable):
        await rig.run(rig.engine.release("o", (), ""))
    for _ in range(3):
        with pytest.raises(Unavailable):
            await rig.run(rig.engine.get_reservation("o"))
    assert rig.quantities() == [(0, 0), (0, 3)], "released nothing"
    monkeypatch.setattr(parts, "run_part", run_part)
    assert (await rig.run(rig.engine.get_reservation("o"))).state == State.RELEASED
    assert rig.quantities() == [(0, 0), (0, 0)]
    assert len(said(caplog)) == 1, f"said at each read: {said(caplog)}"


def test_a_line_said_once_per_order_and_groups_is_news_again_for_other_groups_or_once_forgotten() -> None:
    """``Told``: news for a key only where what is told differs from the last told, or the key was forgotten
    (``forget``, or the oldest past ``most``)."""
    told = Told(2)
    assert told.news(("e", "o1"), [1]) and not told.news(("e", "o1"), [1])
    assert told.news(("e", "o1"), [1, 2]) and told.news(("f", "o1"), [1, 2])
    told.forget(("e", "o1"))
    assert told.news(("e", "o1"), [1, 2])
    assert told.news(("e", "o2"), [1])  # ("f", "o1") the oldest: forgotten
    assert told.news(("f", "o1"), [1, 2]) and not told.news(("e", "o2"), [1])
