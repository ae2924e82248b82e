"""Errors that decide what the consumer runtime does with a message."""

from typing import ClassVar

from nats.errors import MaxPayloadError

from schemas.common import FailureCode


class Rejected(Exception):
    """The command can never succeed (bad input, refused): ack it and emit ``<service>.failed``
    carrying ``code``. Raise the subclass that says why; its message is for people."""

    code: ClassVar[FailureCode] = FailureCode.FAILED


class Invalid(Rejected):
    code = FailureCode.INVALID


class NotFound(Rejected):
    code = FailureCode.NOT_FOUND


class Forbidden(Rejected):
    code = FailureCode.FORBIDDEN


class Conflict(Rejected):
    code = FailureCode.CONFLICT


class Unauthenticated(Rejected):
    code = FailureCode.UNAUTHENTICATED


class Unavailable(Rejected):
    code = FailureCode.UNAVAILABLE


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
