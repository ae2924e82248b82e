"""Messages every service shares."""

from schemas.base import Message


class CommandFailed(Message):
    """A command that cannot succeed (bad arguments, refused); the caller should not wait."""

    command: str
    error: str
    retryable: bool = False
