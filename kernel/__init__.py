"""The shared kernel: settings, the SQL engine and its migrations, process hosting, logs, traces,
and the grants that both policy and tools read.

Handlers, sagas and the gateway build on it; it knows the bus and schemas only, never an area or
the CLI (``soma``), which sits on top of everything (tests/layers keeps this true).
"""
