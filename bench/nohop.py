"""A candidate shape, measured and not shipped: a chat turn with no bus hop before its answer.

    soma run bench.nohop:serve      # in place of the gateway, with policy, memory and slm not
                                    # run (SOMA_CHAT_PIPELINE=passthrough)

DESIGN.md ("The chat path") ends on it: every shape with a bus hop before the answer was above
5 ms on this machine before its work was done, the one-process shape (``bench/fused.py``)
included, because the hop to it and back costs what its floor shows. What is left is the turn
LiteLLM's proxy runs, with Soma's trail: the process that holds the request checks the prompt,
recalls, asks the model and checks the answer itself, and publishes each decision to SOMA_EVT.

This is the gateway (``gateway.app.serve``, unchanged) and, in the same process, the one-process
turn of ``bench/fused.py`` serving as the slm process does (its model list, its commands). A
pass-through turn's ``start`` calls that turn's function in process instead of publishing
``slm.complete``: the answer is the reply the gateway awaits, and ``slm.completed`` is published
after it, with the id the slm process's reply would have, so analytics meters it as before.
The prompt check's, the recall's and the answer check's events are published by the fused turn
as it goes; the memory write after the answer.

In the product it would make the gateway hold the handlers' code, which the layering rules out
(DESIGN.md, "Layers"); it is here so the figure of the shape that decision is about is measured,
not guessed. A prototype's limits are ``bench/fused.py``'s, and one more: the command is not
stored, so a gateway killed mid-turn leaves nothing to redeliver (the caller's connection dies
with it, as it does for a direct turn).
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench import fused
from bus.consume import reply_id
from bus.publish import envelope_for, publish
from bus.request import Reply
from bus.runtime import serve as serve_service
from bus.service import Connected
from gateway import app, passthrough
from kernel.settings import Settings
from schemas.slm import SlmComplete


async def serve(settings: Settings) -> None:
    service = fused.build(settings)
    turn = service.routes[SlmComplete]
    serving: list[Connected] = []
    told: set[asyncio.Task[Any]] = set()

    async def connected(bus: Connected) -> None:
        serving.append(bus)

    service.startup.append(connected)

    async def start(self: passthrough.PassThroughTurn, events: asyncio.Queue[Reply]) -> None:
        message = passthrough.command(self.turn, self.id)
        env = envelope_for(
            message,
            tenant=self.principal.tenant,
            actor=self.principal.user,
            correlation_id=self.id,
            message_id=passthrough.command_id(self.id),
        )
        answer = await turn(message, env)
        reply = env.reply(passthrough.COMPLETED, reply_id(env.message_id))
        events.put_nowait(Reply(reply, passthrough.COMPLETED, answer))
        task = asyncio.ensure_future(publish(serving[0], answer, reply))
        told.add(task)
        task.add_done_callback(told.discard)

    passthrough.PassThroughTurn.start = start  # type: ignore[method-assign]
    await asyncio.gather(serve_service(service, settings, None), app.serve(settings))
