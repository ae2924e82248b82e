"""Fitting recalled memories into the prompt's character budget."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.memory.budget import ELLIPSIS, MIN_CUT_CHARS, fit_to_budget
from schemas.memory import MemoryItem


def items(*texts: str) -> list[MemoryItem]:
    return [MemoryItem(id=str(i), text=text) for i, text in enumerate(texts)]


def test_items_that_fit_are_kept_whole_and_in_rank_order() -> None:
    fitted = fit_to_budget(items("first", "second", "third"), max_chars=100)
    assert [item.text for item in fitted] == ["first", "second", "third"]


def test_the_newline_between_items_counts_against_the_budget() -> None:
    fitted = fit_to_budget(items("aaaa", "bbbb"), max_chars=8)
    assert [item.text for item in fitted] == ["aaaa"]


def test_the_first_item_that_does_not_fit_is_cut_at_a_word_and_ends_the_list() -> None:
    long = " ".join(["word"] * 40)
    fitted = fit_to_budget(items("short one", long, "tiny"), max_chars=80)
    assert [item.id for item in fitted] == ["0", "1"]
    cut = fitted[1].text
    assert cut.endswith(ELLIPSIS)
    assert cut[: -len(ELLIPSIS)].split() == ["word"] * len(cut[: -len(ELLIPSIS)].split())


def test_too_little_room_for_a_useful_cut_drops_the_rest() -> None:
    fitted = fit_to_budget(items("x" * 50, "y" * 100), max_chars=50 + MIN_CUT_CHARS - 1)
    assert [item.text for item in fitted] == ["x" * 50]


def test_a_zero_budget_fits_nothing() -> None:
    assert fit_to_budget(items("anything"), max_chars=0) == []


@settings(max_examples=50)
@given(
    texts=st.lists(st.text(min_size=1, max_size=120), max_size=8),
    budget=st.integers(min_value=0, max_value=400),
)
def test_the_fitted_items_never_exceed_the_budget_and_keep_their_ranking(texts, budget) -> None:
    given_items = items(*texts)
    fitted = fit_to_budget(given_items, budget)
    assert len("\n".join(item.text for item in fitted)) <= budget
    assert [item.id for item in fitted] == [item.id for item in given_items[: len(fitted)]]
    assert all(a.text == b.text for a, b in zip(fitted[:-1], given_items, strict=False))
