"""The tools handler: a registry of MCP-style tools, run once per call id and recorded in SQL."""
