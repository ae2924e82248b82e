"""Policy: each tenant's constitution — blocked topics, personal data and secrets, prompt
injection, tool allow-lists per role, token budgets — applied to every prompt, tool call and
answer, with a decision (allow, flag, redact, deny) that is itself an event.
"""
