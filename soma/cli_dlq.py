"""``soma dlq``: list, inspect, replay and purge dead letters (the logic is ``bus.deadletter``)."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from soma import terminal

app = typer.Typer(
    help="""Dead letters: messages a handler could not process, kept with the reason.

A message lands here when it cannot be decoded (bad envelope, unknown subject, schema-invalid
body) or when its handler failed `SOMA_MAX_DELIVER` times. Each dead letter keeps the original
subject, headers and body, the reason, the handler and the delivery count. Fix the cause, then
replay: the original goes back to its subject with a fresh message id (so the dedup window does
not drop it) and leaves the dead-letter stream.

**Examples**

    soma dlq ls
    soma dlq show 7
    soma dlq replay 7
    soma dlq replay --all
    soma dlq purge --yes

**Environment**

* `NATS_URL` — the NATS server (default: the one `soma up` recorded, else :4222)
""",
    rich_markup_mode="markdown",
    no_args_is_help=True,
)


def _letter_json(letter: Any) -> dict[str, Any]:
    try:
        payload: Any = json.loads(letter.body) if letter.body else None
    except ValueError:
        payload = {"raw": letter.body.decode(errors="replace")}
    return {
        "seq": letter.seq,
        "time": letter.time,
        "subject": letter.subject,
        "service": letter.service,
        "deliveries": letter.deliveries,
        "reason": letter.reason,
        "headers": letter.headers,
        "payload": payload,
    }


def _not_found(seq: int) -> str:
    return f"no dead letter with sequence {seq} (replayed or purged?); `soma dlq ls` lists them"


@app.command("ls")
def ls(
    limit: int = typer.Option(100, "--limit", "-n", help="Show at most this many, oldest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """List dead letters, oldest first: sequence, time, handler, subject, deliveries, reason.

    **Examples**

        soma dlq ls
        soma dlq ls --json | jq -r .reason
    """
    from bus import deadletter

    async def listing() -> tuple[list[Any], int]:
        async with terminal.bus(terminal.settings()) as (_nc, js):
            letters = await deadletter.list_all(js, limit=limit)
            total = (await deadletter.info(js)).state.messages
            return letters, total

    letters, total = terminal.run(_guard(listing()))
    if as_json:
        for letter in letters:
            sys.stdout.write(json.dumps(_letter_json(letter)) + "\n")
        return
    if not letters:
        terminal.out.print("no dead letters")
        return
    from rich.table import Table

    table = Table(title=f"{total} dead letters", title_justify="left")
    for column in ("seq", "time", "service", "subject", "deliveries", "reason"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        table.add_row(
            str(letter.seq), str(letter.time)[:19], letter.service, letter.subject,
            str(letter.deliveries), letter.reason,
        )
    terminal.out.print(table)
    if total > len(letters):
        terminal.note(f"showing the first {len(letters)}; --limit shows more")


@app.command()
def show(
    seq: int = typer.Argument(..., help="The dead letter's sequence (from `soma dlq ls`)."),
    as_json: bool = typer.Option(False, "--json", help="Print it as one JSON object."),
) -> None:
    """Show one dead letter in full: reason, original subject, headers and body.

    **Example**

        soma dlq show 7
    """
    from bus import deadletter

    async def fetch() -> Any:
        async with terminal.bus(terminal.settings()) as (_nc, js):
            return await deadletter.get(js, seq)

    letter = terminal.run(_guard(fetch(), seq))
    data = _letter_json(letter)
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
        return
    from rich.markup import escape

    out = terminal.out
    out.print(f"[bold]dead letter {letter.seq}[/bold]  {escape(str(letter.time))}")
    out.print(f"  subject     {escape(letter.subject)}")
    out.print(f"  service     {escape(letter.service)}")
    out.print(f"  deliveries  {letter.deliveries}")
    out.print(f"  reason      {escape(letter.reason)}", soft_wrap=True)
    out.print("  headers")
    for key, value in sorted(letter.headers.items()):
        out.print(f"    {escape(key)}: {escape(value)}", soft_wrap=True)
    out.print("  body")
    out.print_json(data=data["payload"], indent=2)


@app.command()
def replay(
    seq: int = typer.Argument(0, help="The dead letter to replay.", show_default=False),
    everything: bool = typer.Option(False, "--all", help="Replay every dead letter."),
    keep: bool = typer.Option(False, "--keep", help="Keep it in the dead-letter stream too."),
) -> None:
    """Publish dead letters again to their original subjects.

    Each goes back with its original headers and body and a new message id derived from the
    original (so the dedup window does not drop it), then leaves the dead-letter stream (unless
    --keep). Replay after fixing the cause, or the message returns here.

    **Examples**

        soma dlq replay 7
        soma dlq replay --all
    """
    from bus import deadletter

    if bool(seq) == everything:
        terminal.fail("give one sequence to replay, or --all", terminal.USAGE)

    async def resend() -> list[tuple[int, str]]:
        async with terminal.bus(terminal.settings()) as (_nc, js):
            if not everything:
                return [(seq, await deadletter.replay(js, seq, delete=not keep))]
            letters = await deadletter.list_all(js, limit=1_000_000)
            done = []
            with terminal.err.status(f"replaying {len(letters)} dead letters…"):
                for letter in letters:
                    subject = await deadletter.replay(js, letter.seq, delete=not keep)
                    done.append((letter.seq, subject))
            return done

    done = terminal.run(_guard(resend(), seq or None))
    for number, subject in done:
        terminal.out.print(f"replayed {number} to {subject}")
    if everything:
        terminal.out.print(f"{len(done)} dead letters replayed")


@app.command()
def purge(
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete every dead letter. Asks first unless --yes.

    **Example**

        soma dlq purge --yes
    """
    from bus import deadletter

    async def count() -> int:
        async with terminal.bus(terminal.settings()) as (_nc, js):
            return (await deadletter.info(js)).state.messages

    async def wipe() -> int:
        async with terminal.bus(terminal.settings()) as (_nc, js):
            return await deadletter.purge(js)

    if not yes:
        waiting = terminal.run(_guard(count()))
        if not waiting:
            terminal.out.print("no dead letters")
            return
        if not sys.stdin.isatty():
            terminal.fail(
                f"refusing to delete {waiting} dead letters without confirmation; pass --yes",
                terminal.USAGE,
            )
        typer.confirm(f"delete {waiting} dead letters?", abort=True)
    purged = terminal.run(_guard(wipe()))
    terminal.out.print(f"purged {purged} dead letters")


async def _guard(coro: Any, seq: int | None = None) -> Any:
    """Turn the stream's "not found" answers into messages that say what to do."""
    from nats.js.errors import NotFoundError

    try:
        return await coro
    except NotFoundError:
        if seq:
            terminal.fail(_not_found(seq))
        terminal.fail(
            "the dead-letter stream SOMA_DLQ does not exist yet; start the system "
            "(`soma up`, or any `soma run <process>`) so the streams are created"
        )
