"""A small MCP server over stdio: a notes list kept for the life of the connection."""

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

server = MCPServer("notes", log_level="ERROR")
NOTES: list[str] = []


@server.tool(annotations=ToolAnnotations(read_only_hint=False, idempotent_hint=False))
def add_note(text: str) -> int:
    """Store a note; returns how many notes are stored."""
    NOTES.append(text)
    return len(NOTES)


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def list_notes() -> list[str]:
    """Every stored note, oldest first."""
    return NOTES


@server.tool()
def delete_note(index: int) -> str:
    """Delete the note at ``index`` (0-based)."""
    if not 0 <= index < len(NOTES):
        raise ToolError(f"no note at index {index}; there are {len(NOTES)}")
    return NOTES.pop(index)


if __name__ == "__main__":
    server.run()
