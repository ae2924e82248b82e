"""``soma msg get STREAM SEQ``: one stored message of any stream, with its headers and body.

Like ``nats stream get``: an operator who saw a sequence number in ``soma tail``, ``soma dlq
ls`` or a consumer's info reads the message itself, whatever stream it is in.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC
from typing import Any

import typer

from soma import terminal

app = typer.Typer(
    help="Read stored messages of any stream.",
    rich_markup_mode="markdown",
    no_args_is_help=True,
)


def _body(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return data.decode(errors="replace")


@app.command("get")
def get(
    stream: str = typer.Argument(..., help="The stream (see `soma streams`): SOMA_EVT, …"),
    seq: int = typer.Argument(..., help="The message's sequence number in that stream.", min=1),
    output: str = typer.Option("text", "--output", "-o", help="text or json."),
) -> None:
    """Print one message of a stream: subject, sequence, time, headers and body.

    **Examples**

        soma msg get SOMA_EVT 42
        soma msg get SOMA_DLQ 7 -o json | jq .headers

    **Environment**

    * `NATS_URL` — the NATS server (default: that of the running `soma up`; none: an error)
    """
    from nats.js.errors import NotFoundError

    if output not in ("text", "json"):
        terminal.fail(f"-o {output!r}: choose from text, json", terminal.USAGE)

    async def read() -> dict[str, Any]:
        async with terminal.bus(terminal.settings()) as (_nc, js):
            try:
                msg = await js.get_msg(stream, seq)
            except NotFoundError:
                terminal.fail(
                    f"no message {seq} in stream {stream} (or no stream {stream}); "
                    "`soma streams` shows each stream's first and last sequence"
                )
            return {
                "stream": stream,
                "seq": msg.seq,
                "subject": msg.subject,
                "time": msg.time.astimezone(UTC).isoformat() if msg.time else None,
                "headers": dict(msg.headers or {}),
                "body": _body(msg.data or b""),
            }

    found = terminal.run(read())
    if output == "json":
        sys.stdout.write(json.dumps(found) + "\n")
        return
    terminal.out.print(f"stream   {found['stream']}  seq {found['seq']}")
    terminal.out.print(f"subject  {found['subject']}")
    terminal.out.print(f"time     {found['time'] or '-'}")
    for name, value in found["headers"].items():
        terminal.out.print(f"header   {name}: {value}", markup=False)
    terminal.out.print(json.dumps(found["body"], indent=2), markup=False)
