"""The billing service's messages: declared here, registered through the ``soma.messages``
entry point in this package's pyproject.toml. Nothing in Soma's own tree names them."""

from __future__ import annotations

from schemas.base import Message
from schemas.extensions import command, event


class InvoiceLine(Message):
    sku: str
    quantity: int
    unit_cents: int


class BillingInvoice(Message):
    """Price an order: its lines, with the tenant's tax rate applied."""

    order_id: str
    lines: list[InvoiceLine]
    tax_percent: int = 0


class BillingInvoiced(Message):
    """The priced invoice of an order."""

    order_id: str
    subtotal_cents: int
    tax_cents: int
    total_cents: int


MESSAGES = [
    command("billing", "invoice", BillingInvoice),
    event("billing", "invoiced", BillingInvoiced),
]
