"""The three scenarios' users. Stock they need is seeded per run (SKUs carry the run id)."""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import gevent
import grpc
from locust import between, constant_throughput, task

from atp_client import duration, epoch_ms, timestamp
from benchmarks.peak.book import BOOK
from benchmarks.peak.grpc_user import GrpcUser, pb, reserve_state
from benchmarks.peak.options import Run
from benchmarks.peak.stream_user import StreamUser

DCS = ("dc-east", "dc-west")
STORES = tuple(f"store-{i:03d}" for i in range(1, 301))
HOT_SKUS = 20
PEAK_SKUS = 500


def _rid(kind: str) -> str:
    return f"{BOOK.run}-{kind}-{uuid.uuid4().hex[:16]}"


def flash_stock(units: int) -> dict[tuple[str, str], int]:
    return {(BOOK.sku(f"flash-{i:02d}"), DCS[0]): units for i in range(HOT_SKUS)}


def flash_line() -> tuple[str, str, int]:
    return BOOK.sku(f"flash-{random.randrange(HOT_SKUS):02d}"), DCS[0], random.randint(1, 2)


def peak_lines() -> list[tuple[str, str, int]]:
    return [(BOOK.sku(f"peak-{random.randrange(PEAK_SKUS):04d}"), random.choice(DCS), random.randint(1, 3))
            for _ in range(random.randint(1, 3))]


def peak_stock(store_skus: int) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """(DC positions the invariants check, store positions POS sells from: ``store_skus`` at each store)."""
    dcs = {(BOOK.sku(f"peak-{i:04d}"), dc): 5_000 for i in range(PEAK_SKUS) for dc in DCS}
    stores = {(BOOK.sku(f"peak-{i:04d}"), s): 8 for i in range(store_skus) for s in STORES}
    return dcs, stores


class Orders(GrpcUser):
    """Reserve → (confirm → fulfil | release) | release | let expire; every acknowledgement is booked."""

    abstract = True

    def reserve(self, lines: list[tuple[str, str, int]], ttl_s: int) -> str | None:
        rid = _rid("r")
        req = pb.ReserveRequest(reservation_id=rid, order_ref=rid, channel="web", ttl=duration(ttl_s),
                                lines=[pb.Line(sku=s, location=loc, quantity=q) for s, loc, q in lines])
        resp = self.call("Reserve", req, outcome=reserve_state)
        if resp is None or resp.state != pb.RESERVATION_STATE_HELD:
            return None
        BOOK.held(rid, lines)
        return rid

    def resolve(self, rid: str, confirm: float, fulfil: float) -> None:
        roll = random.random()
        if roll < confirm:
            if self.call("Confirm", pb.ConfirmRequest(reservation_id=rid)) is None:
                return
            BOOK.acknowledged[rid] = "CONFIRMED"
            if random.random() < fulfil and self.call("Fulfill", pb.FulfillRequest(reservation_id=rid)):
                BOOK.acknowledged[rid] = "FULFILLED"
        elif roll < confirm + 0.15 and self.call("Release", pb.ReleaseRequest(reservation_id=rid)):
            BOOK.acknowledged[rid] = "RELEASED"
        # otherwise the shopper walks away and the hold expires (R3)


class FlashSaleShopper(Orders):
    """A drop on 20 hot SKUs with little stock: most shoppers are refused; winners pay or walk away."""

    wait_time = between(0.05, 0.5)

    @task
    def buy(self) -> None:
        rid = self.reserve([flash_line()], self.params.flash_ttl_s)
        if rid is not None:
            gevent.sleep(random.uniform(0.1, 1.0))  # paying
            self.resolve(rid, confirm=0.6, fulfil=0.0)


class PeakOrders(Orders):
    weight = 3
    wait_time = between(0.2, 1.0)

    @task
    def order(self) -> None:
        rid = self.reserve(peak_lines(), 600)
        if rid is not None:
            self.resolve(rid, confirm=0.8, fulfil=0.7)


class Browser(GrpcUser):
    """Availability reads: the largest share of a peak day's calls."""

    weight = 10
    wait_time = between(0.05, 0.3)

    @task
    def look(self) -> None:
        keys = []
        for _ in range(5):
            n = random.randrange(self.params.store_skus)
            loc = random.choice(DCS) if random.random() < 0.5 else random.choice(STORES)
            keys.append(pb.PositionKey(sku=BOOK.sku(f"peak-{n:04d}"), location=loc))
        self.call("GetAvailability", pb.GetAvailabilityRequest(keys=keys))


class PosTill(GrpcUser):
    """Store tills: sales and a few returns, 20 facts per call, stamped now."""

    weight = 2
    wait_time = between(0.1, 0.5)

    @task
    def sell(self) -> None:
        now = int(time.time() * 1000)
        skus = self.params.store_skus
        facts = [pb.Fact(event_id=uuid.uuid4().hex, source="pos",
                         kind=pb.FACT_KIND_SALE if random.random() < 0.95 else pb.FACT_KIND_RETURN,
                         sku=BOOK.sku(f"peak-{random.randrange(skus):04d}"), location=random.choice(STORES),
                         quantity=1, event_time=timestamp(now - random.randint(0, 2000))) for _ in range(20)]
        self.call("RecordEvents", pb.RecordEventsRequest(events=facts), name="RecordEvents[pos]")


class WmsFeed(GrpcUser):
    """Warehouse receipts at the DCs and cycle counts in stores."""

    wait_time = between(0.5, 2.0)

    @task
    def report(self) -> None:
        now = int(time.time() * 1000)
        facts = []
        for _ in range(20):
            n = random.randrange(self.params.store_skus)
            if random.random() < 0.7:
                facts.append(pb.Fact(event_id=uuid.uuid4().hex, source="wms", kind=pb.FACT_KIND_RECEIPT,
                                     sku=BOOK.sku(f"peak-{n:04d}"), location=random.choice(DCS),
                                     quantity=random.randint(10, 50), event_time=timestamp(now)))
                BOOK.received[(facts[-1].sku, facts[-1].location)] += facts[-1].quantity  # sent: may arrive
            else:
                facts.append(pb.Fact(event_id=uuid.uuid4().hex, source="wms", kind=pb.FACT_KIND_COUNT,
                                     sku=BOOK.sku(f"peak-{n:04d}"), location=random.choice(STORES),
                                     quantity=random.randint(0, 10), event_time=timestamp(now)))
        self.call("RecordEvents", pb.RecordEventsRequest(events=facts), name="RecordEvents[wms]")


class ChannelWatcher(GrpcUser):
    """A channel publisher subscribed throughout: snapshot, then changes (reported as their lag)."""

    fixed_count = 2
    wait_time = between(0.5, 1.0)

    @task
    def watch(self) -> None:
        channel = random.choice(self.params.watch_channels)
        started = time.perf_counter()
        request = pb.WatchAvailabilityRequest(channel=channel, snapshot=True)
        events = self.environment.events.request
        try:
            for message in self.stub.WatchAvailability(request, timeout=15):
                if message.kind == pb.WatchAvailabilityResponse.KIND_SNAPSHOT_END:
                    events.fire(request_type="grpc", name="WatchAvailability[snapshot]",
                                response_time=(time.perf_counter() - started) * 1000, response_length=0,
                                exception=None, context={})
                elif message.kind == pb.WatchAvailabilityResponse.KIND_CHANGES and message.updates:
                    lag = max(0, time.time() * 1000 - epoch_ms(message.updates[-1].publish_time))
                    events.fire(request_type="grpc", name="WatchAvailability[change]", response_time=lag,
                                response_length=message.ByteSize(), exception=None, context={})
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:  # the watch ends by its deadline
                events.fire(request_type="grpc", name="WatchAvailability", response_time=0, response_length=0,
                            exception=exc, context={})


class SteadyOrders(PeakOrders):
    wait_time = constant_throughput(1.0)


class SteadyBrowser(Browser):
    wait_time = constant_throughput(4.0)


class ReserveStreamer(StreamUser):
    """An OMS's bulk path (marketplace imports, store replenishment): batches of holds on one stream,
    on the flash sale's hot SKUs or the peak's DC positions; the holds run out or expire."""

    fixed_count = 1  # --stream-users sets it when a run starts (the users are connections, not a share)
    wait_time = between(0.2, 1.0)

    def lines(self) -> tuple[list[tuple[str, str, int]], int]:
        if self.params.scenario == "flash_sale":
            return [flash_line()], self.params.flash_ttl_s
        return peak_lines(), 600


def seed_for(run: Run, send: bool = True) -> None:
    """The run's stock into the book, and (``send``) into the service. A worker (not ``send``) of a scenario
    with receipts does not know every unit sent to the positions it checks: the other workers' receipts."""
    BOOK.alone = send or WmsFeed not in users_for(run)
    if run.scenario == "flash_sale":
        BOOK.seed(flash_stock(run.flash_stock), send)
    else:
        dcs, stores = peak_stock(run.store_skus)
        BOOK.seed(dcs, send)
        BOOK.seed(stores, send)
        for key in stores:  # POS sales lower store stock legitimately: only DC positions are checked
            BOOK.stock.pop(key, None)


SCENARIO_USERS: dict[str, list[Any]] = {
    "flash_sale": [FlashSaleShopper],
    "holiday_peak": [Browser, PeakOrders, PosTill, WmsFeed, ChannelWatcher],
    "steady": [SteadyBrowser, SteadyOrders],
}
ALL_USERS = [*sorted({u for us in SCENARIO_USERS.values() for u in us}, key=lambda u: u.__name__), ReserveStreamer]


def users_for(run: Run) -> list[Any]:
    """The scenario's user classes, with the stream users unless there are none."""
    return [*SCENARIO_USERS[run.scenario], *([ReserveStreamer] if run.stream_users else [])]
