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
``slm.complete``, and its answer is the reply the gateway awaits. The turn publishes its
decisions (the prompt check, the recall, the answer check) and the model's answer
(``slm.completed``, with the id the slm process's reply would have, so analytics meters it as
before) as it goes, and answers once all of them are stored: an answered turn has its trail
and its usage on the bus, as a direct turn does. The memory write follows the answer.

In the product it would make the gateway hold the handlers' code, which the layering rules out
(DESIGN.md, "Layers"); it is here so the figure of the shape that decision is about is measured,
not guessed. A prototype's limits are ``bench/fused.py``'s, and one more: the command is not
stored, so a gateway killed mid-turn leaves nothing to redeliver (the caller's connection dies
with it, as it does for a direct turn).
"""

from __future__ import annotations

import asyncio

from bench import fused
from bus.consume import reply_id
from bus.publish import envelope_for
from bus.request import Reply
from bus.runtime import serve as serve_service
from gateway import app, passthrough
from kernel.settings import Settings
from schemas.slm import SlmComplete


async def serve(settings: Settings) -> None:
    service = fused.build(settings, publish_answer=True)
    turn = service.routes[SlmComplete]

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

    passthrough.PassThroughTurn.start = start  # type: ignore[method-assign]
    await asyncio.gather(serve_service(service, settings, None), app.serve(settings))
