"""The literal screen must never turn away a text its pattern would match."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.policy import literals
from handlers.policy.rules import RuleSet, load_default


def required(pattern: str, flags: int = 0, folded: bool = True) -> literals.Requirement:
    return literals.requirement(re.compile(pattern, flags), folded=folded)


def test_a_sequence_requires_its_longest_literals_longest_first() -> None:
    assert required(r"\bdo\s+anything\s+now\b") == (("anything",), ("now",))


def test_a_branch_requires_one_literal_of_each_alternative() -> None:
    assert required(r"(?:ignore|disregard)\s+previous") == (
        ("previous",),
        ("disregard", "ignore"),
    )


def test_optional_parts_require_nothing() -> None:
    assert required(r"(?:secret)?\d+") == ()
    assert required(r"x(?:abc|\d)") == ()


def test_a_repeat_of_at_least_once_still_requires_its_body() -> None:
    assert required(r"(?:token)+") == (("token",),)


def test_short_common_literals_are_not_worth_a_check() -> None:
    assert required(r"a\s+is") == ()


def test_case_insensitive_parts_require_nothing_of_unfolded_text() -> None:
    assert required(r"(?i:secret)_key\d", folded=False) == (("_key",),)
    assert required(r"SECRET", re.IGNORECASE, folded=False) == ()


def test_literals_are_casefolded_for_folded_text() -> None:
    assert required(r"StraSSe", re.IGNORECASE) == (("strasse",),)


def test_every_default_example_passes_its_rules_screen(default_rules: RuleSet) -> None:
    from handlers.policy.injection import normalize

    screened = [rule for rule in default_rules.rules if rule.screen is not None]
    assert screened  # the default set does use screens
    for rule in screened:
        for example in rule.examples:
            assert rule.screen is not None and rule.screen(normalize(example.text)), rule.id


PATTERNS = [
    pytest.param(
        r"\b(?:ignore|disregard)\s+(?:all\s+)?previous\s+(?:rules|instructions?)\b", id="phrase"
    ),
    pytest.param(r"(?:new|real)\s+instructions?\s*:", id="colon"),
    pytest.param(r"<\|(?:im_start|system)\|>|\[/?inst\]", id="markup"),
    pytest.param(r"(?:ab|cd)+e{2,}(?:fgh|ij)?klm", id="repeats"),
    *[
        pytest.param(rule.pattern.pattern, id=rule.id)
        for rule in load_default().rules
        if rule.pattern is not None
    ],
]


@pytest.mark.parametrize("pattern", PATTERNS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_the_screen_never_rejects_a_text_the_pattern_matches(pattern: str, data: Any) -> None:
    compiled = re.compile(pattern, re.IGNORECASE)
    screen = literals.screen(literals.requirement(compiled, folded=True))
    text = data.draw(st.from_regex(compiled)).casefold()
    if compiled.search(text):
        assert screen is None or screen(text)
