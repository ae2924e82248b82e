"""``soma dlq``: list, inspect, replay and purge dead letters (the logic is ``bus.deadletter``)."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from schemas.catalogue import STREAMS
from soma import terminal

app = typer.Typer(
    help="""Dead letters: messages a handler could not process, kept with the reason.

A message lands here when it cannot be decoded (bad envelope, unknown subject, schema-invalid
body) or when its handler failed `SOMA_MAX_DELIVER` times. Each dead letter keeps the original
subject, headers and body, the reason, the handler and the delivery count. Fix the cause, then
replay: the original goes back to its subject with a fresh message id (so the dedup window does
not drop it) and leaves the dead-letter stream. When the body was the cause, correct it on the
way (`--edit` in your editor, `--body FILE|-` from a script): it is checked against the message's
schema before anything is sent.

The origin shown is the service whose dead-letter subject it was published on, which the NATS
server enforces; headers are only what the publisher wrote. Replay refuses a dead letter whose
headers claim another origin, a command that its origin did not receive (it was addressed to
another service), or an event no longer in the events stream as dead-lettered: replaying it
would publish a forged message with the operator's rights.

**Examples**

    soma dlq ls
    soma dlq show 7
    soma dlq replay 7
    soma dlq replay --all
    soma dlq replay 7 --edit
    soma dlq purge --yes

**Environment**

* `NATS_URL` — the NATS server (default: that of the running `soma up`; none: an error)
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
        "origin": letter.origin,
        "dlq_subject": letter.dlq_subject,
        "suspicions": letter.suspicions(),
        "service": letter.service,
        "deliveries": letter.deliveries,
        "reason": letter.reason,
        "headers": letter.headers,
        "payload": payload,
    }


def _origin_cell(origin: str, claimed: str, suspect: bool) -> str:
    if origin != claimed:
        return f"[red]{origin} (headers say {claimed})[/red]"
    return f"[red]{origin}[/red]" if suspect else origin


def _not_found(seq: int) -> str:
    return f"no dead letter with sequence {seq} (replayed or purged?); `soma dlq ls` lists them"


@app.command("ls")
def ls(
    limit: int = typer.Option(100, "--limit", "-n", help="Show at most this many, oldest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    output: str = typer.Option("table", "--output", "-o", help="table or json (as --json)."),
) -> None:
    """List dead letters, oldest first: sequence, time, origin, subject, deliveries, reason.

    The origin is the service that published it (from its subject, checked by the server); a
    dead letter whose headers or subjects do not agree with it is marked SUSPECT.

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

    if output not in ("table", "json"):
        terminal.fail(f"-o {output!r}: choose from table, json", terminal.USAGE)
    letters, total = terminal.run(_guard(listing()))
    if as_json or output == "json":
        for letter in letters:
            sys.stdout.write(json.dumps(_letter_json(letter)) + "\n")
        return
    if not letters:
        terminal.out.print("no dead letters")
        return
    from rich.table import Table

    table = Table(title=f"{total} dead letters", title_justify="left")
    for column in ("seq", "time", "origin", "subject", "deliveries", "reason"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        suspect = letter.suspicions()
        table.add_row(
            str(letter.seq),
            str(letter.time)[:19],
            _origin_cell(letter.origin, letter.service, bool(suspect)),
            letter.subject,
            str(letter.deliveries),
            f"[red]SUSPECT: {'; '.join(suspect)}[/red]" if suspect else letter.reason,
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
    out.print(f"  origin      {escape(letter.origin)}  (published on {escape(letter.dlq_subject)})")
    out.print(f"  service     {escape(letter.service)}  (as its headers claim)")
    for suspicion in data["suspicions"]:
        out.print(f"  [red]SUSPECT[/red]     {escape(suspicion)}", soft_wrap=True)
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
    force: bool = typer.Option(
        False,
        "--force",
        help="Replay even a dead letter whose origin does not hold up (with a warning each).",
    ),
    edit: bool = typer.Option(
        False,
        "--edit",
        "-e",
        help="Edit the body first in $VISUAL / $EDITOR (else vi); sent only if it is valid.",
    ),
    body: str = typer.Option(
        "",
        "--body",
        "-b",
        metavar="FILE|-",
        help="Send this JSON body instead of the original (- reads stdin); checked the same way.",
        show_default=False,
    ),
) -> None:
    """Publish dead letters again to their original subjects, as they were or corrected.

    Each goes back with its original headers and body and a new message id derived from the
    original (so the dedup window does not drop it), then leaves the dead-letter stream (unless
    --keep). Replay after fixing the cause, or the message returns here.

    When the body itself is the cause, --edit opens it as indented JSON in your editor, and
    --body takes the corrected body from a file or stdin (for scripts). The new body must decode
    into the message's type exactly as its handler decodes it: otherwise nothing is sent, the
    dead letter stays, the reason is printed and the exit code is 2 (an edit is kept in a file
    it names, for --body). An edit that changes nothing sends nothing (exit 1). Correlation,
    causation and tenant stay; the message id also names the new body, so an edited replay is
    never dropped as a repeat of an earlier replay of the same dead letter.

    A dead letter whose origin does not hold up is refused and stays where it is: its headers
    claim another service than the one that published it, it is a command addressed to another
    service than its origin, or it is an event no longer in the events stream as dead-lettered.
    With --all the others are still replayed, and the exit code is 1. --force replays it anyway
    and says so on stderr for each one.

    **Examples**

        soma dlq replay 7
        soma dlq replay --all
        soma dlq replay 7 --edit
        soma dlq replay 7 --body fixed.json
        jq '.stage = "prompt"' body.json | soma dlq replay 7 --body -
    """
    from bus import deadletter

    if bool(seq) == everything:
        terminal.fail("give one sequence to replay, or --all", terminal.USAGE)
    if everything and (edit or body):
        terminal.fail(
            "--edit and --body replay one dead letter: give its sequence, not --all", terminal.USAGE
        )
    if edit and body:
        terminal.fail("choose --edit or --body, not both", terminal.USAGE)
    replacement = _new_body(seq, edit, body, force) if (edit or body) else None

    async def one(js: Any, number: int) -> tuple[int, str | None, list[str]]:
        try:
            subject = await deadletter.replay(js, number, delete=not keep, body=replacement)
        except deadletter.Untrusted as exc:
            if not force:
                return number, None, exc.reasons
            subject = await deadletter.replay(
                js, number, delete=not keep, force=True, body=replacement
            )
            return number, subject, exc.reasons
        return number, subject, []

    async def resend() -> list[tuple[int, str | None, list[str]]]:
        async with terminal.bus(terminal.settings()) as (_nc, js):
            if not everything:
                return [await one(js, seq)]
            letters = await deadletter.list_all(js, limit=1_000_000)
            with terminal.err.status(f"replaying {len(letters)} dead letters…"):
                return [await one(js, letter.seq) for letter in letters]

    done = terminal.run(_guard(resend(), seq or None))
    refused = 0
    for number, subject, reasons in done:
        why = "; ".join(reasons)
        if subject is None:
            refused += 1
            terminal.err.print(
                f"refused to replay dead letter {number}: {why}. It stays in the dead-letter "
                "stream; inspect it with `soma dlq show`, and replay it only if you know where "
                "it came from (--force).",
                soft_wrap=True,
            )
            continue
        if reasons:
            terminal.err.print(
                f"[bold red]WARNING[/bold red]: replayed dead letter {number} although {why} "
                "(--force)",
                soft_wrap=True,
            )
        terminal.out.print(f"replayed {number} to {subject}")
    if everything:
        terminal.out.print(f"{len(done) - refused} dead letters replayed, {refused} refused")
    if refused:
        raise typer.Exit(1)


def _new_body(seq: int, edit: bool, source: str, force: bool) -> bytes:
    """The corrected body for dead letter ``seq``, checked against its message type.

    Decoded as its handler will decode it (``soma.messages.parse``), so a replay cannot send
    what would only come back here. Sent compact, as publishers write it. A dead letter that
    would be refused is refused before anyone spends time editing it.
    """
    from bus import deadletter
    from soma.messages import InvalidMessage, parse

    async def fetch() -> tuple[Any, list[str]]:
        async with terminal.bus(terminal.settings()) as (_nc, js):
            letter = await deadletter.get(js, seq)
            return letter, await deadletter.verify(js, letter)

    letter, reasons = terminal.run(_guard(fetch(), seq))
    if reasons and not force:
        terminal.fail(
            f"refused to replay dead letter {seq}: {'; '.join(reasons)}. It stays in the "
            "dead-letter stream; replay it only if you know where it came from (--force)."
        )
    kept: str | None = None
    if edit:
        text, kept = _edited(letter)
    elif source == "-":
        text = sys.stdin.read()
    else:
        try:
            with open(source) as f:
                text = f.read()
        except OSError as exc:
            terminal.fail(f"--body: cannot read {source}: {exc.strerror}", terminal.USAGE)
    try:
        parse(letter.subject, text)
    except InvalidMessage as exc:
        where = (
            f"\nyour edit is kept in {kept}: correct it, then `soma dlq replay {seq} --body {kept}`"
            if kept
            else ""
        )
        terminal.fail(f"not replayed; dead letter {seq} stays. {exc}{where}", terminal.USAGE)
    if kept:
        import os

        os.unlink(kept)
    return json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False).encode()


def _edited(letter: Any) -> tuple[str, str]:
    """Open the dead letter's body in the user's editor; ``(text, file it is in)``."""
    import os
    import shlex
    import subprocess
    import tempfile

    shown = _letter_json(letter)["payload"]
    original = (
        json.dumps(shown, indent=2, ensure_ascii=False) + "\n"
        if shown is not None and not (isinstance(shown, dict) and set(shown) == {"raw"})
        else letter.body.decode(errors="replace")
    )
    fd, path = tempfile.mkstemp(prefix=f"soma-dlq-{letter.seq}-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        f.write(original)
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    try:
        done = subprocess.run([*shlex.split(editor), path])
    except OSError as exc:
        os.unlink(path)
        terminal.fail(f"cannot start the editor {editor!r} ($VISUAL / $EDITOR): {exc.strerror}")
    with open(path) as f:
        text = f.read()
    if done.returncode != 0:
        os.unlink(path)
        terminal.fail(f"the editor exited with code {done.returncode}; nothing replayed")
    if text == original:
        os.unlink(path)
        terminal.fail(
            f"the body is unchanged; nothing replayed (`soma dlq replay {letter.seq}` sends it "
            "as it is)"
        )
    return text, path


@app.command()
def purge(
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    service: str = typer.Option(
        "",
        "--service",
        help="Only dead letters of this service (its origin).",
        show_default=False,
    ),
    tenant: str = typer.Option(
        "", "--tenant", "-t", help="Only this tenant's.", show_default=False
    ),
    reason: str = typer.Option(
        "",
        "--reason",
        help="Only those whose reason contains this text (any case).",
        show_default=False,
    ),
    before: str = typer.Option(
        "",
        "--before",
        help="Only those dead-lettered before this: unix seconds, a duration ago (7d) or ISO 8601.",
        show_default=False,
    ),
) -> None:
    """Delete dead letters: all of them, or those every given filter matches. Asks first
    unless --yes.

    **Examples**

        soma dlq purge --yes
        soma dlq purge --service slm --reason "model refused" --yes
        soma dlq purge --tenant acme --before 7d --yes
    """
    from bus import deadletter

    filtered = any((service, tenant, reason, before))
    cutoff = _cutoff(before) if before else None

    def matches(letter: Any) -> bool:
        origin = letter.dlq_subject.split(".")
        if service and letter.service != service:
            return False
        if tenant and (len(origin) < 3 or origin[2] != tenant):
            return False
        if reason and reason.lower() not in letter.reason.lower():
            return False
        return cutoff is None or _letter_time(letter) < cutoff

    async def chosen() -> list[int]:
        async with terminal.bus(terminal.settings()) as (_nc, js):
            if not filtered:
                total = (await deadletter.info(js)).state.messages
                return [-1] * total
            letters = await deadletter.list_all(js, limit=sys.maxsize)
            return [letter.seq for letter in letters if matches(letter)]

    async def wipe(seqs: list[int]) -> int:
        async with terminal.bus(terminal.settings()) as (_nc, js):
            if not filtered:
                return await deadletter.purge(js)
            for seq in seqs:
                await js.delete_msg(STREAMS["dlq"], seq)
            return len(seqs)

    seqs = terminal.run(_guard(chosen()))
    if not seqs:
        terminal.out.print("no dead letters" + (" match" if filtered else ""))
        return
    if not yes:
        if not sys.stdin.isatty():
            terminal.fail(
                f"refusing to delete {len(seqs)} dead letters without confirmation; pass --yes",
                terminal.USAGE,
            )
        typer.confirm(f"delete {len(seqs)} dead letters?", abort=True)
    purged = terminal.run(_guard(wipe(seqs)))
    terminal.out.print(f"purged {purged} dead letters")


def _cutoff(text: str) -> float:
    import time

    from schemas.durations import BadDuration, moment

    try:
        return moment(text, time.time())
    except BadDuration as exc:
        terminal.fail(f"--before: {exc}", terminal.USAGE)


def _letter_time(letter: Any) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(letter.time).timestamp()
    except ValueError:
        return float("inf")  # no readable time: never "before" anything


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
