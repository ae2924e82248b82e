"""A saga of the billing package: invoice an order, then answer with the invoice.

Registered through the ``soma.sagas`` entry point, so the saga runner loads it beside its own
definitions; start one with ``soma saga start billing_order '{"order_id": …}' --wait``.
"""

from __future__ import annotations

from typing import Any

from billing_handler.messages import BillingInvoice, BillingInvoiced, InvoiceLine
from sagas.definition import Call, Complete, Definition, Retry, Run
from schemas.base import Message


class OrderInput(Message):
    order_id: str
    lines: list[InvoiceLine]
    tax_percent: int = 0


billing_order = Definition("billing_order", version=1, input_type=OrderInput)


@billing_order.start
def price(run: Run[OrderInput]) -> Call:
    order = run.input
    return Call(
        BillingInvoice(order_id=order.order_id, lines=order.lines, tax_percent=order.tax_percent),
        then=priced,
        timeout=10,
        retry=Retry(max_attempts=3),
    )


@billing_order.step
def priced(run: Run[OrderInput], invoice: BillingInvoiced) -> Complete:
    return Complete(
        {"order_id": invoice.order_id, "total_cents": invoice.total_cents, "state": "invoiced"}
    )


DEFINITIONS: list[Definition[Any]] = [billing_order]
