"""Embeddings behind one interface: ``await embed(texts)``, ``dimension`` and ``name``.

Three embedders, chosen by ``MemoryConfig``:

- ``hashed-ngrams`` (the default, offline): word unigrams and bigrams and character 3-grams,
  hashed into a fixed-size vector. It captures lexical overlap, not meaning — "car" and
  "automobile" are unrelated to it. It exists so development and tests need no model or service.
- ``openai``: any server speaking the OpenAI embeddings API, through the ``openai`` SDK.
- ``sentence-transformers``: a local model, when that optional extra is installed.

``name`` identifies the vector space; it is recorded on the collection so vectors from two
different embedders are never compared.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import itertools
import math
import re
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from openai import AsyncOpenAI

from handlers.memory.config import Encoding, MemoryConfig

HASHED_DIMENSION = 384
OPENAI_DEFAULT_MODEL = "text-embedding-3-small"
SENTENCE_TRANSFORMERS_DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
OPENAI_BATCH = 256

_WORD = re.compile(r"\w+", re.UNICODE)


class Embedder(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]: ...

    async def close(self) -> None: ...


class EmbeddingsUnavailable(RuntimeError):
    """The configured embedder cannot be used here (missing extra, bad configuration)."""


class HashedNgrams:
    """Offline, deterministic feature hashing of word 1-2-grams and character 3-grams.

    Not a language model: similarity means shared words and spellings, nothing more. Hashing uses
    BLAKE2b (not Python's salted ``hash``) so vectors are identical across processes and runs,
    and a sign bit per feature so collisions cancel out on average instead of piling up.
    """

    def __init__(self, dimension: int = HASHED_DIMENSION) -> None:
        if dimension < 8:
            raise ValueError("hashed-ngrams needs a dimension of at least 8")
        self._dimension = dimension

    @property
    def name(self) -> str:
        return f"hashed-ngrams-{self._dimension}"

    @property
    def dimension(self) -> int:
        return self._dimension

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [self.vector(text) for text in texts]

    async def close(self) -> None:
        pass

    def vector(self, text: str) -> list[float]:
        out = [0.0] * self._dimension
        for feature, weight in _features(text):
            index, sign = _slot(feature, self._dimension)
            out[index] += sign * weight
        norm = math.sqrt(sum(x * x for x in out))
        return [x / norm for x in out] if norm else out


@functools.lru_cache(maxsize=1 << 16)
def _slot(feature: str, dimension: int) -> tuple[int, float]:
    """Where a feature lands and with which sign. Words and their pieces repeat from one text to
    the next, and hashing each anew was most of an embedding's cost; the cache keeps the
    vectors exactly as they were."""
    digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return (value >> 1) % dimension, 1.0 if value & 1 else -1.0


def _features(text: str) -> list[tuple[str, float]]:
    words = _WORD.findall(text.casefold())
    features = [(f"w:{w}", 1.0) for w in words]
    features += [(f"b:{a} {b}", 1.0) for a, b in itertools.pairwise(words)]
    for w in words:
        padded = f"<{w}>"
        features += [(f"c:{padded[i : i + 3]}", 0.5) for i in range(len(padded) - 2)]
    return features


class OpenAICompatible:
    """Embeddings from any OpenAI-compatible ``/embeddings`` endpoint (OpenAI, vLLM, Ollama, …)."""

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None,
        api_key: str | None,
        dimension: int | None = None,
        encoding: Encoding = "base64",
        timeout: float = 30.0,
    ) -> None:
        # Local servers accept any bearer token; the SDK insists on one.
        self._client = AsyncOpenAI(
            base_url=base_url, api_key=api_key or "no-key", timeout=timeout, max_retries=2
        )
        self._model = model
        self._requested_dimension = dimension
        self._dimension = dimension
        self._encoding: Encoding = encoding

    @property
    def name(self) -> str:
        return f"openai:{self._model}"

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            raise EmbeddingsUnavailable("embedding dimension unknown: call probe() first")
        return self._dimension

    async def close(self) -> None:
        await self._client.close()

    async def probe(self) -> int:
        """Learn the vector size from the server when it was not configured."""
        if self._dimension is None:
            self._dimension = len((await self.embed(["dimension probe"]))[0])
        return self._dimension

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), OPENAI_BATCH):
            vectors += await self._embed_batch(list(texts[start : start + OPENAI_BATCH]))
        return vectors

    async def _embed_batch(self, batch: list[str]) -> list[list[float]]:
        extra: dict[str, Any] = {}
        if self._requested_dimension is not None:
            extra["dimensions"] = self._requested_dimension
        response = await self._client.embeddings.create(
            model=self._model, input=batch, encoding_format=self._encoding, **extra
        )
        rows = sorted(response.data, key=lambda row: row.index)
        if len(rows) != len(batch):
            raise RuntimeError(f"embeddings server returned {len(rows)} vectors for {len(batch)}")
        vectors = [_decode(row.embedding) for row in rows]
        if self._dimension is not None and any(len(v) != self._dimension for v in vectors):
            raise RuntimeError(
                f"embeddings server returned vectors of size {len(vectors[0])}, "
                f"expected {self._dimension}"
            )
        return vectors


def _decode(embedding: Any) -> list[float]:
    """Floats as they are; base64 as the API defines it: little-endian float32."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(float).tolist()
    return [float(x) for x in embedding]


class SentenceTransformers:
    """A local sentence-transformers model (the optional ``embeddings`` extra)."""

    def __init__(self, model: str) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise EmbeddingsUnavailable(
                "SOMA_EMBEDDINGS=sentence-transformers needs the optional extra: "
                "pip install 'soma-agent-hub[embeddings]'"
            ) from exc
        self._model_name = model
        self._model = SentenceTransformer(model)
        self._dimension = int(self._model.get_sentence_embedding_dimension())

    @property
    def name(self) -> str:
        return f"sentence-transformers:{self._model_name}"

    @property
    def dimension(self) -> int:
        return self._dimension

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        # Encoding is CPU-bound; keep the event loop free for the bus.
        matrix = await asyncio.to_thread(
            self._model.encode, list(texts), normalize_embeddings=True, convert_to_numpy=True
        )
        return [[float(x) for x in row] for row in matrix]

    async def close(self) -> None:
        pass


async def open_embedder(config: MemoryConfig) -> Embedder:
    """The embedder the configuration names, ready to use (its dimension known)."""
    kind = config.embedder_kind()
    if kind == "hashed-ngrams":
        return HashedNgrams(config.embeddings_dimension or HASHED_DIMENSION)
    if kind == "sentence-transformers":
        model = config.embeddings_model or SENTENCE_TRANSFORMERS_DEFAULT_MODEL
        return await asyncio.to_thread(SentenceTransformers, model)
    key = config.embeddings_api_key
    if key is None and config.embeddings_url is None:
        key = config.openai_api_key
        if key is None:
            raise EmbeddingsUnavailable(
                "SOMA_EMBEDDINGS=openai without SOMA_EMBEDDINGS_URL needs OPENAI_API_KEY "
                "or SOMA_EMBEDDINGS_API_KEY"
            )
    embedder = OpenAICompatible(
        model=config.embeddings_model or OPENAI_DEFAULT_MODEL,
        base_url=config.embeddings_url,
        api_key=key,
        dimension=config.embeddings_dimension,
        encoding=config.embeddings_encoding,
        timeout=config.embeddings_timeout,
    )
    try:
        await embedder.probe()
    except BaseException:
        await embedder.close()
        raise
    return embedder
