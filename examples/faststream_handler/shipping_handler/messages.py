"""The shipping service's messages, registered through the ``soma.messages`` entry point."""

from __future__ import annotations

from schemas.base import Message
from schemas.extensions import command, event


class ShippingQuote(Message):
    """Quote the cost of sending a parcel."""

    order_id: str
    grams: int
    country: str


class ShippingQuoted(Message):
    """What sending the parcel costs, and who quoted it for whom."""

    order_id: str
    cents: int
    carrier: str
    quoted_for: str = ""  # the actor of the command, from Soma's envelope


MESSAGES = [
    command("shipping", "quote", ShippingQuote),
    event("shipping", "quoted", ShippingQuoted),
]
