"""The identity tables, declared on the shared metadata; ``identity_0001`` creates the same.

Times are epoch seconds (double precision): the JWT claims are epoch seconds too, and the
value reads the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from kernel.db import metadata

tenants = Table(
    "identity_tenants",
    metadata,
    # Also a NATS subject token, so restricted to [a-z0-9_-].
    Column("id", String(63), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at", Double, nullable=False),
    # The command that created it: the same command delivered again gets the same answer.
    Column("created_by", String(64), nullable=True),
    # A spending limit over the whole tenant (identity_0003): USD per window, NULL for none.
    Column("max_budget", Double, nullable=True),
    Column("budget_duration", String(16), nullable=True),
    Column("budget_start", Double, nullable=True),
)

users = Table(
    "identity_users",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(63), ForeignKey("identity_tenants.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("roles", JSON, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("created_by", String(64), nullable=True),
    UniqueConstraint("tenant_id", "name", name="uq_identity_users_tenant_id_name"),
)

api_keys = Table(
    "identity_api_keys",
    metadata,
    # The public part of ``sk-soma-<id>-<secret>``: lookup is by id, never by secret.
    Column("id", String(16), primary_key=True),
    Column("tenant_id", String(63), ForeignKey("identity_tenants.id"), nullable=False),
    Column("user_id", String(32), ForeignKey("identity_users.id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    # SHA-256 (hex) of the secret part; the secret itself is shown once and never stored.
    Column("secret_hash", String(64), nullable=False),
    Column("roles", JSON, nullable=False),
    # NULL: every model.
    Column("models", JSON, nullable=True),
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double, nullable=True),
    Column("revoked_at", Double, nullable=True),
    # The key's own limits (identity_0003); NULL: none of its own.
    Column("max_budget", Double, nullable=True),
    Column("budget_duration", String(16), nullable=True),
    Column("budget_start", Double, nullable=True),
    Column("rpm_limit", Integer, nullable=True),
    Column("tpm_limit", Integer, nullable=True),
    # Free-form labels for the key's owner (team, purpose); never interpreted.
    Column("key_metadata", JSON, nullable=True),
)

signing_keys = Table(
    "identity_signing_keys",
    metadata,
    # RFC 7638 thumbprint of the public key.
    Column("kid", String(64), primary_key=True),
    # "next" (published, not yet signing), "active" (signing) or "retired" (verify only).
    Column("status", String(8), nullable=False),
    # PKCS#8 PEM, encrypted when a passphrase is configured; never leaves this module.
    Column("private_pem", Text, nullable=False),
    Column("public_jwk", JSON, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("activated_at", Double, nullable=True),
    # For retired keys: published until every token it signed has expired, then pruned.
    Column("verify_until", Double, nullable=True),
)

# At most one "active" and one "next" key, even with several identity processes rotating at once.
Index(
    "ix_identity_signing_keys_one_per_status",
    signing_keys.c.status,
    unique=True,
    sqlite_where=signing_keys.c.status.in_(["active", "next"]),
    postgresql_where=signing_keys.c.status.in_(["active", "next"]),
)

token_families = Table(
    "identity_token_families",
    metadata,
    # Also the ``sid`` claim of the access tokens it issues, so one revocation covers them all.
    Column("id", String(32), primary_key=True),
    Column("tenant_id", String(63), ForeignKey("identity_tenants.id"), nullable=False),
    Column("user_id", String(32), ForeignKey("identity_users.id"), nullable=False, index=True),
    Column("key_id", String(16), nullable=True),
    Column("client_id", String(200), nullable=False),
    Column("roles", JSON, nullable=False),
    Column("models", JSON, nullable=True),
    Column("scope", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("last_used_at", Double, nullable=True),
    Column("revoked_at", Double, nullable=True),
)

refresh_tokens = Table(
    "identity_refresh_tokens",
    metadata,
    # SHA-256 (hex) of the opaque token.
    Column("token_hash", String(64), primary_key=True),
    Column(
        "family_id",
        String(32),
        ForeignKey("identity_token_families.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
    # Set when exchanged: a second presentation is reuse and revokes the family...
    Column("used_at", Double, nullable=True),
    # ...unless it is the exchanging command delivered again (same command, same successor).
    Column("rotated_by", String(64), nullable=True),
    Column("successor", String(64), nullable=True),
)

revocations = Table(
    "identity_revocations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # "jti": one access token; "session": every token of a refresh family (``sid``);
    # "user": every token of that user issued before ``revoked_at``.
    Column("kind", String(8), nullable=False),
    Column("subject", String(64), nullable=False),
    Column("revoked_at", Double, nullable=False, index=True),
    # After this no token covered by the entry can still be valid, so it is pruned.
    Column("expires_at", Double, nullable=False, index=True),
    # The command that recorded it, so a redelivery does not revoke again (later tokens too).
    Column("command_id", String(64), nullable=True, index=True),
)

# Children before parents, for whoever must empty them in order.
ALL = (revocations, refresh_tokens, token_families, signing_keys, api_keys, users, tenants)
