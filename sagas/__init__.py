"""Durable saga state machines on SQL + JetStream: our stand-in for Temporal workflows."""
