"""How a definition names its steps: a registered name outlives a rename of the function, and
old names listed as aliases still find the step an instance stored."""

from __future__ import annotations

import pytest

from sagas.definition import Complete, Definition, Run, step_name


def test_a_step_is_stored_under_the_name_it_was_registered_with() -> None:
    d: Definition[dict] = Definition("named", version=1, input_type=dict)

    @d.start(name="check_prompt")
    def check_the_prompt_first(run: Run[dict]) -> Complete:
        return Complete()

    assert d.first == "check_prompt"
    assert step_name(check_the_prompt_first) == "check_prompt"
    assert d.steps["check_prompt"] is check_the_prompt_first


def test_an_alias_finds_the_renamed_step_an_instance_stored() -> None:
    d: Definition[dict] = Definition("renamed", version=1, input_type=dict)

    @d.step(aliases=("recall",))
    def recall_memories(run: Run[dict]) -> Complete:
        return Complete()

    assert d.steps["recall"] is recall_memories
    assert step_name(recall_memories) == "recall_memories"


def test_two_steps_under_one_name_are_refused() -> None:
    d: Definition[dict] = Definition("twice", version=1, input_type=dict)

    @d.step(name="same")
    def one(run: Run[dict]) -> Complete:
        return Complete()

    with pytest.raises(ValueError, match="two steps named 'same'"):

        @d.step(name="same")
        def other(run: Run[dict]) -> Complete:
            return Complete()


def test_typed_data_keeps_the_engines_own_keys_out_of_the_steps_view() -> None:
    import msgspec

    class Notes(msgspec.Struct):
        seen: int = 0

    d: Definition[dict] = Definition("typed_view", version=1, input_type=dict, data_type=Notes)
    stored = {"seen": 2, "_signals": [{"name": "go"}]}
    view = d.decode_data(stored)
    assert view == Notes(seen=2)
    view.seen += 1
    assert d.encode_data(view, stored) == {"seen": 3, "_signals": [{"name": "go"}]}
