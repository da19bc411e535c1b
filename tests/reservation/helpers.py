from __future__ import annotations

from reservation import Fact, FactKind, Ledger, Limits, ReserveCommand, reserve_command

LIMITS = Limits()


def ledger_with(stock: dict[tuple[str, str], int], limits: Limits = LIMITS) -> Ledger:
    ledger = Ledger(0, limits)
    for n, ((sku, loc), qty) in enumerate(stock.items()):
        ledger.record_fact(Fact(f"seed-{n}", "test", FactKind.RECEIPT, sku, loc, qty, 1_000))
    ledger.commit(1_000)
    return ledger


def cmd(rid: str, *lines: tuple[str, str, int], ttl: int = 60, partial: bool = False, **kw: str) -> ReserveCommand:
    return reserve_command(reservation_id=rid, order_ref=kw.get("order_ref", "o-1"), channel=kw.get("channel", "web"),
                           lines=lines, ttl_seconds=ttl, allow_partial=partial, limits=LIMITS)
