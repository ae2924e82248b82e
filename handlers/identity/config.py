"""Token lifetimes, issuer and key rotation, read from ``SOMA_JWT_*`` environment variables."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class IdentitySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="", extra="ignore", populate_by_name=True, frozen=True
    )

    issuer: str = Field(default="soma", validation_alias="SOMA_JWT_ISSUER")
    audience: str = Field(default="soma-gateway", validation_alias="SOMA_JWT_AUDIENCE")
    access_ttl: float = Field(default=900, gt=0, validation_alias="SOMA_JWT_TTL_SECONDS")
    refresh_ttl: float = Field(
        default=30 * 86400, gt=0, validation_alias="SOMA_JWT_REFRESH_TTL_SECONDS"
    )
    rotate_every: float = Field(default=86400, gt=0, validation_alias="SOMA_JWT_ROTATE_SECONDS")
    # Clock skew tolerated between the identity process and the gateways.
    leeway: float = Field(default=5, ge=0, validation_alias="SOMA_JWT_LEEWAY_SECONDS")
    # Encrypts private signing keys at rest (PKCS#8); without it they are stored in clear
    # (still never served), so set it wherever the database is shared or backed up.
    key_passphrase: SecretStr | None = Field(
        default=None, validation_alias="SOMA_JWT_KEY_PASSPHRASE"
    )

    @property
    def revocation_ttl(self) -> float:
        """How long a revocation must be remembered: until every token it covers has expired."""
        return self.access_ttl + self.leeway
