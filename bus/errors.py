"""Errors that decide what the consumer runtime does with a message."""


class Rejected(Exception):
    """The command can never succeed (bad input, refused): ack it and emit ``<service>.failed``."""


class BusUnavailable(RuntimeError):
    """NATS cannot be reached; the message says which URL and what to run."""


class RequestTimeout(TimeoutError):
    """No reply event arrived for a request within its timeout."""
