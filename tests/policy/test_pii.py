"""Detectors of personal data and secrets, beyond the examples in the default rule set."""

from __future__ import annotations

import pytest

from handlers.policy import pii


def found(detector: pii.Detector, text: str) -> list[str]:
    return [text[start:end] for start, end in detector(text)]


@pytest.mark.parametrize(
    ("digits", "valid"),
    [
        ("4111111111111111", True),
        ("4012888888881881", True),
        ("79927398713", True),
        ("4111111111111112", False),
        ("79927398710", False),
    ],
)
def test_luhn_checksum(digits: str, valid: bool) -> None:
    assert pii.luhn_valid(digits) is valid


@pytest.mark.parametrize(
    ("iban", "valid"),
    [
        ("DE89 3704 0044 0532 0130 00", True),
        ("GB82WEST12345698765432", True),
        ("gb82west12345698765432", True),
        ("FR1420041010050500013M02606", True),
        ("GB82WEST12345698765433", False),
        ("GB82", False),
        ("1282WEST12345698765432", False),
    ],
)
def test_iban_mod_97_check(iban: str, valid: bool) -> None:
    assert pii.iban_valid(iban) is valid


def test_card_numbers_failing_luhn_are_not_reported() -> None:
    text = "4111 1111 1111 1111 and 4111 1111 1111 1112"
    assert found(pii.find_cards, text) == ["4111 1111 1111 1111"]


def test_a_digit_run_longer_than_any_card_is_not_a_card() -> None:
    assert found(pii.find_cards, "order 41111111111111111111111") == []


def test_two_cards_side_by_side_are_two_matches() -> None:
    text = "4111111111111111 5500000000000004"
    assert found(pii.find_cards, text) == ["4111111111111111", "5500000000000004"]


def test_dates_versions_and_short_numbers_are_not_phone_numbers() -> None:
    text = "On 2024-06-01 we shipped 1.2.3, ticket 12345, room 101, +1 2"
    assert found(pii.find_phones, text) == []


def test_international_numbers_need_eight_to_fifteen_digits() -> None:
    assert found(pii.find_phones, "call +49 30 901820") == ["+49 30 901820"]
    assert found(pii.find_phones, "call +49 301") == []


def test_social_security_numbers_in_reserved_ranges_are_not_reported() -> None:
    assert found(pii.find_us_ssns, "000-12-3456 666-12-3456 900-12-3456 123-00-4567") == []
    assert found(pii.find_us_ssns, "123 45 6789") == ["123 45 6789"]


def test_hyphenated_words_after_sk_are_not_api_keys() -> None:
    assert found(pii.find_api_keys, "risk-management-and-compliance-framework-v2") == []
    assert found(pii.find_api_keys, "sk-management-and-compliance-framework") == []


@pytest.mark.parametrize(
    "secret",
    [
        "sk-ant-api03-AbCdEf0123456789AbCdEf0123456789",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
        "glpat-AbCdEf0123456789AbCd",
        "ASIAIOSFODNN7EXAMPLE",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ],
)
def test_other_common_secret_formats_are_found(secret: str) -> None:
    assert found(pii.find_api_keys, f"config: {secret}\n") == [secret]


def test_a_private_key_block_without_its_end_is_redacted_to_the_end() -> None:
    text = "paste:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7"
    assert found(pii.find_private_keys, text) == [text[len("paste:\n") :]]


def test_a_public_key_is_not_a_private_key() -> None:
    text = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBg\n-----END PUBLIC KEY-----"
    assert found(pii.find_private_keys, text) == []


def test_an_email_address_is_found_whole_inside_punctuation() -> None:
    assert found(pii.find_emails, "(mail: first.last+tag@sub.example.co.uk).") == [
        "first.last+tag@sub.example.co.uk"
    ]


def test_a_tenant_pattern_reports_its_matches() -> None:
    import re

    detector = pii.pattern_detector(re.compile(r"EMP-\d{6}"))
    assert found(detector, "EMP-123456 and EMP-654321") == ["EMP-123456", "EMP-654321"]
