"""Connecting to NATS: reconnect forever once up, fail fast and clearly when it never was."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client

from bus.errors import BusUnavailable

log = logging.getLogger("soma.bus")


def unreachable_message(url: str, err: BaseException | str) -> str:
    return (
        f"cannot reach NATS at {url} ({err}). "
        "Start the whole system with `soma up` (it starts an embedded nats-server), "
        "or start nats-server with JetStream (`nats-server -js`) and point NATS_URL at it."
    )


def inbox_prefix_for(url: str) -> str:
    """``_INBOX.<user>`` for the first user named in ``url``; plain ``_INBOX`` when none is.

    Replies to requests, JetStream API answers and pull deliveries all arrive under the
    connection's inbox prefix. With one prefix per user, nats-accounts.conf lets a user
    subscribe to its own replies only, so no process can read another's.
    """
    for server in url.split(","):
        server = server.strip()
        user = urlsplit(server if "://" in server else f"nats://{server}").username
        if user:
            return f"_INBOX.{user}"
    return "_INBOX"


class _Reports:
    """What a connection tells the log: errors, a lost server, the way back.

    nats-py reports its own ``close()`` through the same callback as a lost server. A process
    that stops closes its connections, and each close logged "disconnected; reconnecting"
    although nothing was lost and no reconnect would follow: on a Ctrl-C of ``soma up`` a
    warning per connection of every process. Once the client it reports on is known
    (``watch``), a disconnect of a closed client is the close itself and is not a warning.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.client: Client | None = None

    async def error(self, err: Exception) -> None:
        log.warning("nats connection error (%s): %s", self.url, err)

    async def disconnected(self) -> None:
        if self.client is not None and self.client.is_closed:
            log.debug("nats connection to %s closed", self.url)
            return
        log.warning("nats disconnected from %s; reconnecting", self.url)

    async def reconnected(self) -> None:
        log.info("nats reconnected to %s", self.url)


def connection_options(url: str, name: str, inbox_prefix: str | None = None) -> dict:
    """Options shared by raw clients and the FastStream broker: reconnect without limit.

    Hand the client made with them to ``watch`` so that closing it is not logged as a loss.
    """
    reports = _Reports(url)
    return {
        "servers": [u.strip() for u in url.split(",")],
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 3,
        "allow_reconnect": True,
        "error_cb": reports.error,
        "disconnected_cb": reports.disconnected,
        "reconnected_cb": reports.reconnected,
        "inbox_prefix": inbox_prefix or inbox_prefix_for(url),
    }


def watch(options: dict, client: Client) -> None:
    """Tell the callbacks in ``options`` which client they report on (see ``_Reports``)."""
    reports = getattr(options.get("disconnected_cb"), "__self__", None)
    if isinstance(reports, _Reports):
        reports.client = client


# Where a process looks for NATS when no URL is configured: a local server on its usual port.
DEFAULT_URL = "nats://127.0.0.1:4222"


async def connect(
    url: str | None, name: str = "soma", *, inbox_prefix: str | None = None
) -> Client:
    """A nats-py client; ``BusUnavailable`` names the URL and what to run if none answers.

    ``url`` None is ``DEFAULT_URL``. ``inbox_prefix`` defaults to the one for the URL's user
    (``inbox_prefix_for``).
    """
    url = url or DEFAULT_URL
    opts = connection_options(url, name, inbox_prefix)
    opts["max_reconnect_attempts"] = 2
    try:
        nc = await nats.connect(**opts)
    except Exception as exc:
        raise BusUnavailable(unreachable_message(url, exc)) from exc
    nc.options["max_reconnect_attempts"] = -1
    watch(opts, nc)
    return nc
