# The same commands as ./run (see README.md); `just` is optional.

# Start the whole system on embedded defaults (NATS from the wheel, SQLite).
up *ARGS:
    ./run up {{ARGS}}

# Run the test suite.
test *ARGS:
    ./run test {{ARGS}}

# ruff and mypy, as CI runs them.
lint:
    ./run lint

# Bus throughput (raw nats-py vs the runtime) and publish latency.
bench *ARGS:
    ./run bench {{ARGS}}
