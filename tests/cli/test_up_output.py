"""What `soma up` prints for the operator names its URLs but never their passwords."""

from __future__ import annotations

import io

from rich.console import Console

from kernel.settings import Settings
from soma.supervisor import Supervisor


def test_a_nats_url_with_a_password_is_printed_without_it() -> None:
    out = io.StringIO()
    supervisor = Supervisor(Settings(), console=Console(file=out, width=200))
    supervisor.say("NATS: using nats://admin:hunter2-secret@10.0.0.1:4222 (NATS_URL)")
    printed = out.getvalue()
    assert "hunter2-secret" not in printed
    assert "nats://admin:***@10.0.0.1:4222" in printed
