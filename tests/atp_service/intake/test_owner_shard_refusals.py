"""The input streams' reader sending facts of several groups to their owner (``fact_sender``), against a
real service: a call the owner refuses for one shard's trouble is sent again one call per group, once,
so only that group's facts stay pending (``GroupRefused``); an owner that does not answer is not tried
group by group. And the reader's sends (``OwnerSends``): a group refused at its owner is skipped there
alone, the owner is not; tried again by one send of its facts alone once its wait has passed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import grpc
import pytest
from prometheus_client import CollectorRegistry

from atp_client.pb.atp.v1 import atp_pb2 as pb
from atp_service import AtpService
from atp_service.edge import isolate
from atp_service.edge.errors import trailers_of
from atp_service.edge.forward import Forwarder
from atp_service.edge.record import fact_sender
from atp_service.intake import owners
from atp_service.intake.facts import Result
from atp_service.intake.owners import FactSender, GroupRefused, OwnerSends
from atp_service.intake.quarantine import Acks
from atp_service.metrics import EdgeMetrics
from reservation import DomainError, Fact, FactKind, FactOutcome, Limits, Moved, Reason, ResourceExhausted, Unavailable
from tests.conftest import ServiceFactory
from tests.ports import held_port

APPLIED: Result = (FactOutcome.APPLIED, "")


def receipts(skus: Sequence[str], now: int) -> list[Fact]:
    return [Fact(f"e-{sku}", "pos", FactKind.RECEIPT, sku, "DC", 1, now - 1000) for sku in skus]


def sender(service: AtpService) -> tuple[FactSender, CollectorRegistry]:
    """How the reader sends facts (its own ``Forwarder``, counting its calls in a registry of its own)."""
    registry = CollectorRegistry()
    assert service.engine is not None
    forwarder = Forwarder(EdgeMetrics(registry))
    return fact_sender(forwarder, None, Limits(), 4 << 20, service.engine.place), registry


def calls(registry: CollectorRegistry, outcome: str) -> float:
    counted = registry.get_sample_value("atp_forwarded_calls_total", {"method": "RecordEvents", "outcome": outcome})
    return counted or 0.0


async def test_a_call_refused_for_one_shard_is_sent_again_group_by_group(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    service, _ = await start_service(shards=4)
    assert service.engine is not None
    place = service.engine.place
    skus = {g: [s for s in (f"s-{i}" for i in range(256)) if place(s) == g][:2] for g in range(3)}
    actor = service.engine.actors[1]

    def shed(_work: Any) -> Any:
        raise ResourceExhausted("shard 1: mailbox full")

    monkeypatch.setattr(actor, "submit", shed)
    send, metrics = sender(service)
    facts = receipts([skus[0][0], skus[1][0], skus[2][0], skus[1][1], skus[0][1]], service.clock.now_ms())
    answer = await send(f"127.0.0.1:{service.port}", facts)
    # applied by the call refused whole (its shards' parts are applied before it is refused): duplicates (E8)
    assert [answer[i] for i in (0, 2, 4)] == [(FactOutcome.DUPLICATE, "")] * 3, answer
    for i in (1, 3):
        refusal = answer[i]
        assert isinstance(refusal, GroupRefused) and refusal.group == 1 and \
            refusal.reason is Reason.SHARD_OVERLOADED, refusal
    # the whole call refused, then one call per group (once): groups 0 and 2 answered, group 1 refused again
    assert (calls(metrics, "error"), calls(metrics, "ok")) == (2, 2)


async def test_an_owner_that_does_not_answer_is_not_tried_group_by_group(start_service: ServiceFactory) -> None:
    service, _ = await start_service(shards=4)
    assert service.engine is not None
    place = service.engine.place
    skus = [next(s for s in (f"s-{i}" for i in range(256)) if place(s) == g) for g in range(4)]
    send, metrics = sender(service)
    answer = await send(f"127.0.0.1:{held_port()}", receipts(skus, service.clock.now_ms()))  # nothing listens
    assert all(type(result) is Unavailable and result.reason is Reason.OUTCOME_UNKNOWN for result in answer), answer
    assert calls(metrics, "error") == 1, "one call, not one per group"


def moved(owner: str, *groups: int) -> tuple[list[Fact], list[Result | DomainError]]:
    facts = [Fact(f"e{n}", "pos", 1, f"sku-{n}", "DC", 1, 0) for n in range(len(groups))]
    return facts, [Moved(group, owner) for group in groups]


async def test_a_group_refused_at_its_owner_is_skipped_alone_and_tried_again_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(owners, "OWNER_RETRY", owners.BackoffPolicy(first_s=0.01, max_s=0.01))
    sent: list[list[str]] = []
    troubled = [True]

    async def send(owner: str, facts: Sequence[Fact]) -> list[Result | DomainError]:
        sent.append([fact.sku for fact in facts])
        return [GroupRefused(1, "in doubt", Reason.OUTCOME_UNKNOWN) if fact.sku == "sku-1" and troubled[0]
                else APPLIED for fact in facts]

    sends = OwnerSends(send)
    facts, results = moved("o", 0, 1)
    await sends.to_owners(facts, results, [0, 1])
    assert results[0] == APPLIED and isinstance(results[1], GroupRefused)
    assert sends.due("o") and sends.due("o", 0) and not sends.due("o", 1), "the group alone waits"
    sent.clear()
    facts, results = moved("o", 0, 1, 2)
    await sends.to_owners(facts, results, [0, 1, 2])
    assert sent == [["sku-0", "sku-2"]], "the group's facts skipped during its wait, the others sent"
    assert isinstance(results[1], Moved)
    await asyncio.sleep(0.02)
    sent.clear()
    troubled[0] = False
    facts, results = moved("o", 0, 1)
    await sends.to_owners(facts, results, [0, 1], wait=False)  # the pending pass: the group's try not waited for
    await asyncio.gather(*sends.tries)
    assert sorted(sent) == [["sku-0"], ["sku-1"]], "tried again by a send of its facts alone"
    assert sends.due("o", 1) and not sends._failing


async def test_a_failing_owner_s_try_takes_the_facts_of_its_refused_group_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner fails while one of its groups waits: its one try carries that group's facts too (a try
    of the group alone waits for the owner: a reader holding only that group's facts would try neither)."""
    monkeypatch.setattr(owners, "OWNER_RETRY", owners.BackoffPolicy(first_s=0.01, max_s=0.01))
    answers: list[str] = ["group", "down", "ok"]
    sent: list[list[str]] = []

    async def send(owner: str, facts: Sequence[Fact]) -> list[Result | DomainError]:
        sent.append([fact.sku for fact in facts])
        what = answers.pop(0)
        if what == "down":
            raise ConnectionError("paused")
        return [GroupRefused(1, "in doubt", Reason.OUTCOME_UNKNOWN) if what == "group" else APPLIED for _ in facts]

    sends = OwnerSends(send)
    facts, results = moved("o", 1)
    await sends.to_owners(facts, results, [0])
    assert sends.due("o") and not sends.due("o", 1)
    facts, results = moved("o", 0)
    await sends.to_owners(facts, results, [0])  # the owner fails
    assert not sends.due("o") and not sends.due("o", 1)
    await asyncio.sleep(0.02)
    facts, results = moved("o", 1)
    assert sends.due("o", 1), "the owner's try is due, and takes the group's facts"
    await sends.to_owners(facts, results, [0])
    assert sent[-1] == ["sku-0"] and results == [APPLIED]
    assert sends.due("o") and sends.due("o", 1) and not sends._failing


async def test_a_call_refused_for_one_fact_of_it_is_split_until_that_fact_alone_carries_the_refusal(
        start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fact its shard refuses for a lasting reason (here ``INTERNAL``, as a SHIPMENT naming a plain hold
    spanning shards under leases is) refuses the owner's whole call: every fact of it was answered
    ``OUTCOME_UNKNOWN`` (transient), left pending with the culprit for ever and the culprit never
    dead-lettered. Halved in order until it is alone: the others answered (duplicates where the refused
    call applied them, E8), the culprit refused with the owner's reason — within ``MAX_SPLIT_CALLS``."""
    service, _ = await start_service(shards=4)
    assert service.engine is not None and service.desk is not None
    facts = receipts([f"s-{i}" for i in range(8)], service.clock.now_ms())
    culprits = {facts[5].event_id}
    record = service.desk._record

    async def refusing(batch: Sequence[Fact], origin: str, acks: Acks | None = None,
                       sender_writes: bool = False) -> list[Result | DomainError]:
        out = await record([fact for fact in batch if fact.event_id not in culprits], origin, None, sender_writes)
        for n, fact in enumerate(batch):
            if fact.event_id in culprits:
                out.insert(n, DomainError("a change this owner cannot make; nothing was applied", Reason.INTERNAL))
        return out

    monkeypatch.setattr(service.desk, "_record", refusing)
    send, metrics = sender(service)
    owner = f"127.0.0.1:{service.port}"
    answer = await send(owner, facts)
    assert [type(result) for result in answer] == [tuple] * 5 + [DomainError] + [tuple] * 2, answer
    refusal = answer[5]
    assert isinstance(refusal, DomainError) and refusal.reason is Reason.INTERNAL and "facts_recorded" not in \
        refusal.metadata and "nothing was applied" in refusal.message, refusal
    assert {result[0] for result in answer if isinstance(result, tuple)} == {FactOutcome.DUPLICATE}
    # 8 refused, then halves: 0-3 answered, 4-7 refused; 4-5 refused, 6-7 answered; 4 answered, 5 refused
    assert (calls(metrics, "error"), calls(metrics, "ok")) == (4, 3)

    monkeypatch.setattr(isolate, "MAX_SPLIT_CALLS", 2)  # the bound: what it leaves unsent stays pending
    culprits.update(fact.event_id for fact in facts)
    answer = await send(owner, facts)
    assert [result.reason for result in answer if isinstance(result, DomainError)] == [Reason.OUTCOME_UNKNOWN] * 8
    # the whole call, its first half and that half's first: the budget spent, nothing more sent
    assert (calls(metrics, "error"), calls(metrics, "ok")) == (4 + 3, 3)


async def test_a_group_s_send_that_fails_leaves_no_other_group_s_send_running_unseen() -> None:
    """A call refused for one shard's trouble is sent again one call per group, all at once. One group's send
    failing outright (here the pool of peer channels refusing a channel, nothing sent: ``SERVICE_OVERLOADED``)
    ended the whole send at once while another group's call was still in its owner's hands: that call went on
    unseen, its answer dropped — outliving the reader's stop, which ends only the sends it knows of. Every
    group's send is waited for; the failure is told once all have ended, its facts left pending as before."""
    owner, place = "127.0.0.1:1", {"a": 0, "b": 1}.__getitem__
    in_hand, let_go = asyncio.Event(), asyncio.Event()
    sends: list[list[str]] = []

    class Peers:
        async def send(self, _owner: str, _method: str, request: Any, _within_s: float, _metadata: Any,
                       _own: Any = ()) -> Any:
            skus = [event.sku for event in request.events]
            sends.append(skus)
            if len(skus) > 1:  # the whole call: refused for group 1's shard
                exc = ResourceExhausted("shard 1: mailbox full")
                raise grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(),
                                           grpc.aio.Metadata(*trailers_of(exc)), exc.message, None)
            if skus == ["a"]:  # group 0: in the owner's hands until let go
                in_hand.set()
                await let_go.wait()
                return pb.RecordEventsResponse(results=[pb.FactResult(event_id="e-a",
                                                                      outcome=pb.FACT_OUTCOME_APPLIED)])
            raise Unavailable("no channel to other processes now (max_peer_channels): nothing was sent",
                              Reason.SERVICE_OVERLOADED, metadata={"limit": "max_peer_channels"})

        def counted(self, *_args: Any) -> None:
            pass

    send = fact_sender(cast(Forwarder, Peers()), None, Limits(), 4 << 20, place)
    sending = asyncio.ensure_future(send(owner, receipts(["a", "b"], 10_000)))
    await asyncio.wait_for(in_hand.wait(), 5)
    for _ in range(20):  # loop turns, no clock: group 1's send fails within a few
        await asyncio.sleep(0)
    assert sends == [["a", "b"], ["a"], ["b"]]
    assert not sending.done(), "the send ended while group 0's call was still in its owner's hands"
    let_go.set()
    with pytest.raises(Unavailable) as failed:  # as before: the send failed, its facts stay pending
        await asyncio.wait_for(sending, 5)
    assert failed.value.reason is Reason.SERVICE_OVERLOADED
