"""The billing handler on Soma's own runtime.

Run it beside the built-ins: ``soma up --with billing=billing_handler.service:build``.

Pricing is a pure function of the command, so a redelivered command prices the same invoice
again and its reply (whose message id derives from the command's) is dropped by the server as a
duplicate: at-least-once delivery never bills twice.
"""

from __future__ import annotations

from typing import Any

from billing_handler.messages import BillingInvoice, BillingInvoiced
from bus.errors import Invalid
from bus.service import Service
from schemas.envelope import Envelope


async def invoice(cmd: BillingInvoice, env: Envelope) -> BillingInvoiced:
    if not cmd.lines:
        raise Invalid(f"order {cmd.order_id} has no lines to invoice")
    for line in cmd.lines:
        if line.quantity <= 0 or line.unit_cents < 0:
            raise Invalid(f"line {line.sku} needs a positive quantity and a price")
    subtotal = sum(line.quantity * line.unit_cents for line in cmd.lines)
    tax = (subtotal * cmd.tax_percent + 50) // 100
    return BillingInvoiced(
        order_id=cmd.order_id, subtotal_cents=subtotal, tax_cents=tax, total_cents=subtotal + tax
    )


def build(settings: Any) -> Service:
    """The composition root: one routing table, read at a glance."""
    return Service(name="billing", routes={BillingInvoice: invoice})
