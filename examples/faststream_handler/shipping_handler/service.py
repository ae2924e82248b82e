"""The shipping handler, written with FastStream.

Run it beside the built-ins: ``soma up --with shipping=shipping_handler.service:service``.
The function is an ordinary FastStream subscriber; ``bus.faststream`` gives it the command as
its typed Struct and Soma's envelope, and publishes what it returns as Soma's event.
"""

from __future__ import annotations

from bus.errors import Invalid
from bus.faststream import SomaEnvelope, SomaFastStream
from shipping_handler.messages import ShippingQuote, ShippingQuoted

RATES = {"DE": 490, "FR": 520, "US": 1450}  # cents per started kilogram

service = SomaFastStream("shipping")


@service.command(ShippingQuote)
async def quote(cmd: ShippingQuote, env: SomaEnvelope) -> ShippingQuoted:
    rate = RATES.get(cmd.country.upper())
    if rate is None:
        raise Invalid(f"no carrier ships to {cmd.country!r} (known: {', '.join(RATES)})")
    kilos = max(1, -(-cmd.grams // 1000))
    return ShippingQuoted(
        order_id=cmd.order_id, cents=kilos * rate, carrier="parcelco", quoted_for=env.actor
    )
