"""Protobuf <-> domain conversions, kept out of the servicer so each handler stays short."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from atp_service.pb.atp.v1 import atp_pb2 as pb
from reservation import Limits, Quantities, Reservation, ReserveCommand, reserve_command


def lines_of(lines: Iterable[pb.Line]) -> list[tuple[str, str, int]]:
    return [(line.sku, line.location, line.quantity) for line in lines]


def reserve_cmd(req: pb.ReserveRequest, limits: Limits) -> ReserveCommand:
    return reserve_command(
        reservation_id=req.reservation_id,
        order_ref=req.order_ref,
        channel=req.channel,
        lines=lines_of(req.lines),
        ttl_seconds=req.ttl_seconds,
        allow_partial=req.allow_partial,
        limits=limits,
    )


def reserve_response(rec: Reservation, replayed: bool) -> pb.ReserveResponse:
    out = pb.ReserveResponse()
    fill_reserve_response(out, rec, replayed)
    return out


def fill_reserve_response(out: pb.ReserveResponse, rec: Reservation, replayed: bool) -> None:
    """Fill in place: building sub-messages and assigning them would copy each one."""
    out.reservation_id = rec.reservation_id
    granted = False
    add = out.lines.add
    last: pb.LineResult | None = None
    for line in rec.lines:
        if line.group and last is not None and last.sku == line.sku and last.location == line.group:
            last.requested += line.requested  # another location of the same group line
            last.granted += line.granted
            last.available += line.available
        else:
            last = add(sku=line.sku, location=line.group or line.location, requested=line.requested,
                       granted=line.granted, outcome=cast(pb.LineOutcome, line.outcome), available=line.available)
        if line.granted:
            last.allocations.add(location=line.location, quantity=line.granted)
        granted = granted or line.granted > 0
    out.state = pb.HELD if granted else pb.REJECTED  # the original decision (R5 replays it)
    if granted:
        out.expires_at_ms = rec.created_at + rec.ttl_ms
    out.replayed = replayed


def reservation_pb(rec: Reservation) -> pb.Reservation:
    return pb.Reservation(
        reservation_id=rec.reservation_id,
        order_ref=rec.order_ref,
        channel=rec.channel,
        state=cast(pb.ReservationState, int(rec.state)),
        lines=[
            pb.LineState(
                sku=line.sku, location=line.location, held=line.held, committed=line.committed,
                fulfilled=line.fulfilled, released=line.released,
            )
            for line in rec.lines
        ],
        created_at_ms=rec.created_at,
        expires_at_ms=rec.expires_at,
        updated_at_ms=rec.updated_at,
    )


def availability_pb(sku: str, location: str, q: Quantities) -> pb.Availability:
    return pb.Availability(
        sku=sku, location=location, on_hand=q.on_hand, reserved=q.reserved,
        committed=q.committed, safety_stock=q.safety_stock, available=q.available,
    )
