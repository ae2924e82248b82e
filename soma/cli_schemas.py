"""``soma schemas``: the message catalogue as JSON Schema and AsyncAPI, for other languages."""

from __future__ import annotations

from pathlib import Path

import typer

from soma import terminal

app = typer.Typer(
    help="""The bus's message catalogue as documents other tools read.

Every command and event is declared once, as a typed Struct in schemas/; these commands export
those same declarations, so the documents cannot drift from what the handlers decode.""",
    rich_markup_mode="markdown",
    no_args_is_help=True,
)


@app.command()
def export(
    out: Path = typer.Option(
        Path("schemas-out"), "--out", "-o", help="Folder to write into (created if missing)."
    ),
) -> None:
    """Write one JSON Schema per message and an AsyncAPI 3 document for the whole bus.

    Files: `NAME.schema.json` for every catalogue entry (e.g. `policy.evaluate.schema.json`)
    and `asyncapi.json` (channels, operations, envelope headers). Existing files are
    overwritten.

    **Examples**

        soma schemas export
        soma schemas export --out docs/bus
    """
    from schemas.export import write

    try:
        written = write(out)
    except OSError as exc:
        terminal.fail(f"cannot write to {out}: {exc.strerror}")
    for path in written:
        terminal.out.print(f"wrote {path}")
    terminal.out.print(f"{len(written)} files in {out}")
    from schemas.extensions import problems

    for point, reason in problems.items():
        terminal.out.print(f"not included: entry point {point}: {reason}")
