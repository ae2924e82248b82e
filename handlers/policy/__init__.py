"""Policy: each tenant's constitution — principles in plain language (judged by a model where the
tenant asks for it), blocked topics, personal data and secrets, prompt injection, tool
allow-lists per role, token budgets — applied to every prompt, tool call and answer, with a
decision (allow, flag, redact, deny) that is itself an event naming the constitution's hash.
"""
