"""The ``soma`` command: it assembles the kernel, the bus and every area, and nothing imports it."""
