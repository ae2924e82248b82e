"""Embeddings: the offline hashed embedder, the OpenAI-compatible client, and the selection."""

from __future__ import annotations

import hashlib
import importlib.util
import math
import struct

import pytest

from handlers.memory.config import MemoryConfig
from handlers.memory.embeddings import (
    EmbeddingsUnavailable,
    HashedNgrams,
    OpenAICompatible,
    SentenceTransformers,
    open_embedder,
)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_hashed_ngrams_gives_the_same_vector_in_every_instance() -> None:
    text = "Deploy the staging cluster on Friday"
    first = await HashedNgrams().embed([text])
    second = await HashedNgrams().embed([text])
    assert first == second


async def test_hashed_ngrams_gives_the_vectors_earlier_releases_stored() -> None:
    """Stored memories keep the vectors they were written with: a change of the hashing would
    make every stored memory unreachable to new queries."""
    (vector,) = await HashedNgrams().embed(["The office moved to the third floor."])
    packed = struct.pack(f"<{len(vector)}d", *vector)
    assert hashlib.sha256(packed).hexdigest() == (
        "0a4b02afbeadada6e2ef01293417eb774b43a2a90ae6c615f9b8ad2ed7eeced9"
    )


async def test_hashed_ngrams_vectors_are_unit_length_with_the_configured_dimension() -> None:
    (vector,) = await HashedNgrams(dimension=128).embed(["a few words to embed"])
    assert len(vector) == 128
    assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-9)


async def test_hashed_ngrams_scores_shared_words_above_unrelated_text() -> None:
    query, close, far = await HashedNgrams().embed(
        ["invoice payment overdue", "the invoice payment is overdue", "hiking trails in spring"]
    )
    assert cosine(query, close) > cosine(query, far) + 0.3


async def test_hashed_ngrams_ignores_case() -> None:
    lower, upper = await HashedNgrams().embed(["kubernetes pods", "KUBERNETES Pods"])
    assert lower == upper


async def test_hashed_ngrams_of_text_without_words_is_the_zero_vector() -> None:
    (vector,) = await HashedNgrams(dimension=16).embed(["?! ..."])
    assert vector == [0.0] * 16


def test_hashed_ngrams_names_itself_for_what_it_is() -> None:
    assert HashedNgrams(dimension=384).name == "hashed-ngrams-384"


async def test_openai_compatible_returns_the_servers_float_vectors(embeddings_server) -> None:
    embedder = OpenAICompatible(
        model="embed-small", base_url=embeddings_server.base_url, api_key="k", encoding="float"
    )
    vectors = await embedder.embed(["alpha", "beta gamma"])
    assert vectors == [embeddings_server.vector(t, 8) for t in ["alpha", "beta gamma"]]
    assert embeddings_server.requests[0]["body"]["encoding_format"] == "float"
    await embedder.close()


async def test_openai_compatible_decodes_base64_vectors(embeddings_server) -> None:
    embedder = OpenAICompatible(
        model="embed-small", base_url=embeddings_server.base_url, api_key="k", encoding="base64"
    )
    vectors = await embedder.embed(["alpha", "beta gamma"])
    assert vectors == [embeddings_server.vector(t, 8) for t in ["alpha", "beta gamma"]]
    assert embeddings_server.requests[0]["body"]["encoding_format"] == "base64"
    await embedder.close()


async def test_openai_compatible_sends_the_model_and_the_key(embeddings_server) -> None:
    embedder = OpenAICompatible(
        model="nomic-embed-text", base_url=embeddings_server.base_url, api_key="sk-local"
    )
    await embedder.embed(["hello"])
    request = embeddings_server.requests[0]
    assert request["body"]["model"] == "nomic-embed-text"
    assert request["body"]["input"] == ["hello"]
    assert request["authorization"] == "Bearer sk-local"
    await embedder.close()


async def test_openai_compatible_keeps_input_order_when_the_server_does_not(
    embeddings_server,
) -> None:
    embeddings_server.reverse_order = True
    embedder = OpenAICompatible(model="m", base_url=embeddings_server.base_url, api_key=None)
    texts = ["one", "three", "eleven words"]
    assert await embedder.embed(texts) == [embeddings_server.vector(t, 8) for t in texts]
    await embedder.close()


async def test_openai_compatible_asks_for_a_configured_dimension(embeddings_server) -> None:
    embedder = OpenAICompatible(
        model="m", base_url=embeddings_server.base_url, api_key=None, dimension=4
    )
    (vector,) = await embedder.embed(["short"])
    assert len(vector) == 4
    assert embeddings_server.requests[0]["body"]["dimensions"] == 4
    await embedder.close()


async def test_embeddings_url_selects_the_openai_compatible_embedder_and_learns_its_size(
    embeddings_server, clean_memory_env, monkeypatch
) -> None:
    embeddings_server.size = 12
    monkeypatch.setenv("SOMA_EMBEDDINGS_URL", embeddings_server.base_url)
    monkeypatch.setenv("SOMA_EMBEDDINGS_MODEL", "bge-small")
    embedder = await open_embedder(MemoryConfig())
    assert embedder.name == "openai:bge-small"
    assert embedder.dimension == 12
    await embedder.close()


async def test_the_default_embedder_is_hashed_ngrams(clean_memory_env) -> None:
    embedder = await open_embedder(MemoryConfig())
    assert embedder.name == "hashed-ngrams-384"
    assert embedder.dimension == 384


async def test_openai_without_a_url_or_a_key_is_refused(clean_memory_env, monkeypatch) -> None:
    monkeypatch.setenv("SOMA_EMBEDDINGS", "openai")
    with pytest.raises(EmbeddingsUnavailable, match="OPENAI_API_KEY"):
        await open_embedder(MemoryConfig())


@pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is not None,
    reason="the optional extra is installed here",
)
def test_sentence_transformers_without_the_extra_says_how_to_install_it() -> None:
    with pytest.raises(EmbeddingsUnavailable, match=r"soma-agent-hub\[embeddings\]"):
        SentenceTransformers("sentence-transformers/all-MiniLM-L6-v2")
