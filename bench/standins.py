"""Stand-ins for policy, memory and slm that answer at once: the floor of a chat turn's shape.

    soma run bench.standins:policy      # and :memory, :slm, beside the gateway and the runner

A full turn is a chain: gateway → saga runner → policy ∥ memory → runner → slm → runner →
policy → runner → gateway, each arrow a message through JetStream. With these in place of the
three handlers (one process each, as the handlers run), every arrow of that chain is still
travelled by the real gateway, the real runner and our bus runtime (decode, dedup, ack, the
reply's derived id), but no handler does any work: policy allows, memory recalls nothing and
stores nothing, and the "model" answers without calling anyone. ``bench/gateway.py`` measures a
turn through them as the shape's floor: what a full turn would add if policy, memory and the
model cost nothing at all.
"""

from __future__ import annotations

from bus.service import Service
from kernel.settings import Settings
from schemas.base import Usage
from schemas.envelope import Envelope
from schemas.memory import (
    MemoryEmbed,
    MemoryEmbedded,
    MemoryRecall,
    MemoryRecalled,
    MemoryStore,
    MemoryStored,
)
from schemas.models import ModelInfo, SlmListModels, SlmModelsListed
from schemas.policy import PolicyEvaluate, PolicyEvaluated
from schemas.slm import ChatMessage, SlmComplete, SlmCompleted

ANSWER = ChatMessage(role="assistant", content="A short answer.")
MODEL = "bench-model"  # bench/gateway.py's


async def allow(cmd: PolicyEvaluate, env: Envelope) -> PolicyEvaluated:
    return PolicyEvaluated(decision_id=env.message_id, decision="allow", stage=cmd.stage)


async def recall(cmd: MemoryRecall, env: Envelope) -> MemoryRecalled:
    return MemoryRecalled(items=[])


async def store(cmd: MemoryStore, env: Envelope) -> MemoryStored:
    return MemoryStored(turn_id=cmd.turn_id)


async def embed(cmd: MemoryEmbed, env: Envelope) -> MemoryEmbedded:
    """The gateway asks, with no texts, which embedding model there is."""
    return MemoryEmbedded(model="standin", vectors=[[0.0] for _ in cmd.texts])


async def complete(cmd: SlmComplete, env: Envelope) -> SlmCompleted:
    return SlmCompleted(
        model=cmd.model,
        provider="standin",
        message=ANSWER,
        usage=Usage(prompt_tokens=5, completion_tokens=4),
        key_id=cmd.key_id,
    )


async def models(cmd: SlmListModels, env: Envelope) -> SlmModelsListed:
    """Any model the bench names: the gateway asks which models exist before a turn starts."""
    return SlmModelsListed(models=[ModelInfo(id=MODEL, providers=["standin"])])


# Each under the name of the handler it stands in for: its consumer and its replies are that
# handler's.


def policy(settings: Settings) -> Service:
    return Service("policy", routes={PolicyEvaluate: allow})


def memory(settings: Settings) -> Service:
    return Service("memory", routes={MemoryRecall: recall, MemoryStore: store, MemoryEmbed: embed})


def slm(settings: Settings) -> Service:
    return Service("slm", routes={SlmComplete: complete, SlmListModels: models})
