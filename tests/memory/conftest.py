"""Fixtures for memory: the embedded vector store, SQL engines (SQLite and real PostgreSQL), and a
local HTTP server speaking the OpenAI embeddings API."""

from __future__ import annotations

import base64
import json
import os
import struct
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from handlers.memory import vectors
from handlers.memory.embeddings import HashedNgrams
from tests.servers import area_engines


@pytest.fixture(scope="module")
async def local_vectors(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[vectors.Vectors]:
    """One embedded store per test module, opened as the memory process opens it (no QDRANT_URL)."""
    data_dir = tmp_path_factory.mktemp("memory-data")
    embedder = HashedNgrams()
    index = await vectors.open_index(None, data_dir, "soma_memory", embedder)
    yield vectors.Vectors(index, embedder)
    await index.close()


sqlite_engine, postgresql_url, postgresql_engine, engine = area_engines("memory")


# --- a local server speaking the OpenAI embeddings API --------------------------------------


@dataclass
class EmbeddingsServer:
    base_url: str
    size: int = 8
    reverse_order: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)

    @staticmethod
    def vector(text: str, size: int) -> list[float]:
        """How this server embeds ``text``: quarters, exact in float32, so base64 is lossless."""
        seed = len(text) + (ord(text[0]) if text else 0)
        return [float((seed * (i + 1)) % 97) / 4 for i in range(size)]


def _handler(state: EmbeddingsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/embeddings":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append({"body": body, "authorization": self.headers["Authorization"]})
            texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
            size = body.get("dimensions") or state.size
            data = []
            for index, text in enumerate(texts):
                vector = state.vector(text, size)
                embedding: Any = vector
                if body.get("encoding_format") == "base64":
                    embedding = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
                data.append({"object": "embedding", "index": index, "embedding": embedding})
            if state.reverse_order:
                data.reverse()
            self._send(
                200,
                {
                    "object": "list",
                    "data": data,
                    "model": body["model"],
                    "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)},
                },
            )

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            raw = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    return Handler


@pytest.fixture
def embeddings_server() -> Iterator[EmbeddingsServer]:
    state = EmbeddingsServer(base_url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def clean_memory_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory settings from the test alone, whatever the machine's environment says."""
    for key in list(os.environ):
        if key.startswith(("SOMA_EMBEDDINGS", "SOMA_MEMORY")) or key in {
            "OPENAI_API_KEY",
            "QDRANT_API_KEY",
        }:
            monkeypatch.delenv(key)
