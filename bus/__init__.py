"""The bus runtime: connection, streams, envelope headers, publish with dedup, consume with
ack/nak/backoff/term, dead letters, the request helper and tracing."""
