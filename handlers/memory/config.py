"""Memory settings read from the environment, beside the shared ``kernel.settings.Settings``.

Kept here rather than in the shared settings because only the memory process reads them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

EmbedderKind = Literal["hashed-ngrams", "openai", "sentence-transformers"]
Encoding = Literal["base64", "float"]


class MemoryConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    # Unset: OpenAI-compatible when SOMA_EMBEDDINGS_URL is set, else the offline hashed-ngrams
    # embedder (lexical overlap only, no meaning).
    embeddings: EmbedderKind | None = Field(default=None, alias="SOMA_EMBEDDINGS")
    embeddings_url: str | None = Field(default=None, alias="SOMA_EMBEDDINGS_URL")
    embeddings_model: str | None = Field(default=None, alias="SOMA_EMBEDDINGS_MODEL")
    embeddings_api_key: str | None = Field(default=None, alias="SOMA_EMBEDDINGS_API_KEY")
    # hashed-ngrams: the vector size (default 384). openai: sent as ``dimensions`` when set,
    # otherwise the size is learnt from one probe request at start.
    embeddings_dimension: int | None = Field(default=None, alias="SOMA_EMBEDDINGS_DIMENSION")
    # Some OpenAI-compatible servers only speak "float".
    embeddings_encoding: Encoding = Field(default="base64", alias="SOMA_EMBEDDINGS_ENCODING")
    embeddings_timeout: float = Field(default=30.0, alias="SOMA_EMBEDDINGS_TIMEOUT")
    # Fallback key for api.openai.com only; never sent to a custom SOMA_EMBEDDINGS_URL.
    openai_api_key: str | None = Field(default=None, alias="OPENAI_API_KEY")

    collection: str = Field(default="soma_memory", alias="SOMA_MEMORY_COLLECTION")
    qdrant_api_key: str | None = Field(default=None, alias="QDRANT_API_KEY")

    def embedder_kind(self) -> EmbedderKind:
        if self.embeddings:
            return self.embeddings
        return "openai" if self.embeddings_url else "hashed-ngrams"
