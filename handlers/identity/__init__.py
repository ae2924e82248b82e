"""Identity: tenants, users, roles, API keys, JWT access and refresh tokens, revocation.

``verify`` has no SQL or bus dependency, for the gateway's local token checks.
"""
