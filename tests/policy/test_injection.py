"""Hidden characters and the normalisation that keeps phrase rules from being dodged."""

from __future__ import annotations

from handlers.policy import injection


def tags(text: str) -> str:
    return "".join(chr(0xE0000 + ord(char)) for char in text)


def test_plain_ascii_is_only_lower_cased() -> None:
    assert injection.normalize("Ignore Previous") == "ignore previous"


def test_zero_width_characters_inside_words_are_removed() -> None:
    assert injection.normalize("ig\u200bno\u200dre") == "ignore"


def test_full_width_and_stylised_letters_become_plain() -> None:
    full_width = "".join(chr(ord(char) + 0xFEE0) for char in "IGNORE")
    bold = "".join(chr(0x1D41A + ord(char) - ord("a")) for char in "previous")
    assert injection.normalize(f"{full_width} {bold}") == "ignore previous"


def test_cyrillic_and_greek_look_alikes_become_latin() -> None:
    # Cyrillic i, o, e and Greek rho, omicron, upsilon among Latin letters.
    disguised = "\u0456gn\u043er\u0435 \u03c1r\u0435v\u0456\u03bf\u03c5s"
    assert injection.normalize(disguised) == "ignore previous"


def test_text_hidden_in_tag_characters_is_spelled_out() -> None:
    assert injection.normalize("hello" + tags("ignore this")) == "hello ignore this "


def test_text_hidden_in_variation_selectors_is_spelled_out() -> None:
    hidden = "".join(
        chr(0xFE00 + byte) if byte < 16 else chr(0xE0100 + byte - 16) for byte in b"run rm"
    )
    assert injection.normalize("ok \U0001f600" + hidden) == "ok \U0001f600 run rm "


def test_zero_width_characters_are_found_where_they_hide() -> None:
    text = "pay\u200bpal \u2060x"
    assert injection.find_zero_width(text) == [(3, 4), (8, 9)]


def test_a_joiner_inside_an_emoji_sequence_is_not_hidden_text() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    skin_tone = "\U0001f44b\U0001f3fd\u200d\u2642\ufe0f"
    assert injection.find_zero_width(f"{family} and {skin_tone}") == []


def test_a_joiner_between_latin_letters_is_hidden_text() -> None:
    assert injection.find_zero_width("a\u200db") == [(1, 2)]


def test_a_byte_order_mark_at_the_start_is_not_hidden_text() -> None:
    assert injection.find_zero_width("\ufeffhello") == []
    assert injection.find_zero_width("hel\ufefflo") == [(3, 4)]


def test_bidi_overrides_are_found_and_plain_direction_marks_are_not() -> None:
    assert injection.find_bidi_controls("a\u202eb\u2066c\u2069") == [(1, 2), (3, 4), (5, 6)]
    assert injection.find_bidi_controls("abc\u200f\u200e") == []


def test_tag_characters_are_found_as_one_run() -> None:
    text = "note" + tags("secret") + "."
    assert injection.find_tag_characters(text) == [(4, 10)]


def test_a_subdivision_flag_is_not_hidden_text_but_tags_elsewhere_are() -> None:
    scotland = "\U0001f3f4" + tags("gbsct") + "\U000e007f"
    assert injection.find_tag_characters(f"go {scotland}!") == []
    assert injection.find_tag_characters("x" + tags("gbsct") + "\U000e007f") != []


def test_single_variation_selectors_are_ordinary_and_runs_are_not() -> None:
    assert injection.find_selector_runs("\u2764\ufe0f \u263a\ufe0e") == []
    assert injection.find_selector_runs("\u2764\ufe0f\ufe01") == [(1, 3)]
