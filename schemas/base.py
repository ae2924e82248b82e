"""The base of every payload: a msgspec Struct, keyword-only, rejecting unknown fields.

Unknown fields are refused so a producer's typo becomes a dead letter with a reason, instead of
a silently dropped value.
"""

import msgspec


class Message(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class Extensible(msgspec.Struct, kw_only=True):
    """A payload that gains optional fields from release to release (a decision, a turn's
    result): its readers accept fields they do not know yet, so during a rolling upgrade a
    process of the previous release still reads what a newer one sends."""


class Usage(Message):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
