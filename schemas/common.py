"""Messages every service shares."""

from enum import StrEnum

from schemas.base import Message


class FailureCode(StrEnum):
    """Why a command failed, as a value callers branch on (never its message text).

    The gateway maps each to one HTTP status (gateway/dispatch.py); the CLI to an exit message.
    """

    INVALID = "invalid"  # the command is malformed or breaks a rule of its arguments
    NOT_FOUND = "not_found"  # what it names does not exist (for this tenant)
    FORBIDDEN = "forbidden"  # the caller's role does not allow it
    CONFLICT = "conflict"  # the current state does not allow it (taken, ended, running)
    UNAUTHENTICATED = "unauthenticated"  # the credentials were not accepted
    UNAVAILABLE = "unavailable"  # what it needs is not configured or not reachable here
    FAILED = "failed"  # it was tried and did not work (upstream error, retries spent)


class CommandFailed(Message):
    """A command that cannot succeed (bad arguments, refused); the caller should not wait.

    ``code`` has a default, so a failure sent by a release that did not set it still decodes;
    when upgrading from such a release, roll out readers (gateway, saga runner) first.
    """

    command: str
    error: str
    retryable: bool = False
    code: FailureCode = FailureCode.FAILED
