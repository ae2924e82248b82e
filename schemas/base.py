"""The base of every payload: a msgspec Struct, keyword-only, rejecting unknown fields.

Unknown fields are refused so a producer's typo becomes a dead letter with a reason, instead of
a silently dropped value.
"""

import msgspec


class Message(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class Usage(Message):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
