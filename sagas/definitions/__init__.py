"""The saga definitions this project ships. Keep an old version listed here until its
instances have finished: each instance runs to its end on the version it started with."""

from typing import Any

from sagas.definition import Definition
from sagas.definitions.agent_run import agent_run
from sagas.definitions.agent_task import agent_task
from sagas.definitions.agent_task_v1 import agent_task_v1
from sagas.definitions.chat_turn import chat_turn
from sagas.definitions.chat_turn_v1 import chat_turn_v1

ALL: list[Definition[Any]] = [chat_turn, chat_turn_v1, agent_task, agent_task_v1, agent_run]
