"""Errors that decide what the consumer runtime does with a message."""

from nats.errors import MaxPayloadError


class Rejected(Exception):
    """The command can never succeed (bad input, refused): ack it and emit ``<service>.failed``."""


class BusUnavailable(RuntimeError):
    """NATS cannot be reached; the message says which URL and what to run."""


class RequestTimeout(TimeoutError):
    """No reply event arrived for a request within its timeout."""


class PayloadTooLarge(MaxPayloadError):
    """A message (body and headers) larger than the server's ``max_payload``.

    Sending it would make the server close the connection; it can never succeed, so retrying is
    pointless: the sender refuses the work instead (the gateway answers 413).
    """

    def __init__(self, subject: str, size: int, limit: int) -> None:
        super().__init__()
        self.subject = subject
        self.size = size
        self.limit = limit

    def __str__(self) -> str:
        return (
            f"a {self.size}-byte message on {self.subject} exceeds the NATS server's "
            f"max_payload of {self.limit} bytes"
        )
