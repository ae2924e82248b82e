"""A clock a test moves by hand, to hand a service through the runtime
(``runtime.start(service, settings, clock=clock)``): expiries and windows come due at once."""

from __future__ import annotations

import time


class Clock:
    """Seconds since the epoch, standing still from the time it was made until moved on."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
