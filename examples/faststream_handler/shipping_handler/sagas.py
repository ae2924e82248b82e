"""A saga of the shipping package: quote the parcel, answer with the price."""

from __future__ import annotations

from typing import Any

from sagas.definition import Call, Complete, Definition, Retry, Run
from schemas.base import Message
from shipping_handler.messages import ShippingQuote, ShippingQuoted


class ShipmentInput(Message):
    order_id: str
    grams: int
    country: str


shipping_order = Definition("shipping_order", version=1, input_type=ShipmentInput)


@shipping_order.start
def ask_for_quote(run: Run[ShipmentInput]) -> Call:
    parcel = run.input
    return Call(
        ShippingQuote(order_id=parcel.order_id, grams=parcel.grams, country=parcel.country),
        then=quoted,
        timeout=10,
        retry=Retry(max_attempts=3),
    )


@shipping_order.step
def quoted(run: Run[ShipmentInput], quote: ShippingQuoted) -> Complete:
    return Complete({"order_id": quote.order_id, "cents": quote.cents, "carrier": quote.carrier})


DEFINITIONS: list[Definition[Any]] = [shipping_order]
