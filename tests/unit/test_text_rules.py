"""The text rules themselves (app/core/text.py, the Text and EmailText fields): no app, no
database. The HTTP behaviour is tests/api/test_text_spoofing.py."""

from __future__ import annotations

import re
import sys
import unicodedata

import marshmallow as ma
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core.schemas import EmailText, Text
from app.core.text import (
    BIDI_RANGES,
    FORMAT_RANGES,
    forbidden_format_char,
    normalise_email,
)

ALL_CODE_POINTS = range(sys.maxunicode + 1)
SURROGATES = range(0xD800, 0xE000)


def in_ranges(code: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(a <= code <= b for a, b in ranges)


def test_the_format_table_holds_every_format_character_of_this_python() -> None:
    """A newer Unicode that adds format characters fails here, not silently in production."""
    missing = [
        f"U+{c:04X}"
        for c in ALL_CODE_POINTS
        if unicodedata.category(chr(c)) == "Cf" and not in_ranges(c, FORMAT_RANGES)
    ]
    assert missing == []


def test_the_format_table_holds_nothing_visible() -> None:
    """Only format characters, or code points this Python's Unicode has not assigned yet."""
    extra = [
        f"U+{c:04X}"
        for a, b in FORMAT_RANGES
        for c in range(a, b + 1)
        if unicodedata.category(chr(c)) not in {"Cf", "Cn"}
    ]
    assert extra == []


def test_bidi_controls_are_format_characters() -> None:
    assert all(in_ranges(c, FORMAT_RANGES) for a, b in BIDI_RANGES for c in range(a, b + 1))


@pytest.mark.parametrize(
    ("char", "single_line", "multi_line"),
    [
        ("\u202e", True, True),  # right-to-left override
        ("\u202a", True, True),  # left-to-right embedding
        ("\u2066", True, True),  # left-to-right isolate
        ("\u2069", True, True),  # pop directional isolate
        ("\u200e", True, False),  # left-to-right mark
        ("\u061c", True, False),  # Arabic letter mark
        ("\u200b", True, False),  # zero-width space
        ("\u200d", True, False),  # zero-width joiner
        ("\ufeff", True, False),  # zero-width no-break space
        ("\u00ad", True, False),  # soft hyphen
        ("\U000e0041", True, False),  # tag letter A
        ("a", False, False),
        ("\u00e9", False, False),
        ("\u3000", False, False),  # ideographic space: visible width, not a format character
    ],
)
def test_which_characters_each_kind_of_text_refuses(
    char: str, single_line: bool, multi_line: bool
) -> None:
    text = f"a{char}b"
    assert (forbidden_format_char(text, multiline=False) == char) is single_line
    assert (forbidden_format_char(text, multiline=True) == char) is multi_line


class Sample(ma.Schema):
    name = Text(max_length=50)
    title = Text(min_length=1, max_length=50)
    bio = Text(max_length=50, multiline=True)
    password = Text(max_length=50, strip=False, check_format=False)
    email = EmailText()


def load_one(field: str, value: str) -> str | list[str]:
    try:
        return Sample().load({field: value})[field]
    except ma.ValidationError as exc:
        return exc.messages[field]  # type: ignore[index,return-value]


@pytest.mark.parametrize(
    ("text", "allowed"),
    [
        ("\U0001f468\u200d\U0001f469\u200d\U0001f467", True),  # family: emoji ZWJ sequence
        ("\U0001f3f3\ufe0f\u200d\U0001f308", True),  # rainbow flag (after VS16)
        ("\U0001f469\U0001f3fd\u200d\U0001f4bb", True),  # technologist, skin tone
        ("\u0639\u0644\u06cc\u200c\u0631\u0636\u0627", True),  # Persian name with ZWNJ
        ("\u0915\u094d\u200d\u0937", True),  # Devanagari: virama, ZWJ (half form)
        ("\u0915\u094d\u200c\u0937", True),  # Devanagari: virama, ZWNJ (explicit virama)
        ("ad\u200dmin", False),  # between Latin letters: invisible
        ("ad\u200cmin", False),
        ("\u200d\U0001f469", False),  # nothing to join on the left
        ("\U0001f469\u200d", False),
        ("\u0639\u200cx", False),  # Arabic letter, then Latin
        ("\U0001f469\u200d\u200b\U0001f4bb", False),  # another format character hides in it
    ],
)
def test_joiners_are_allowed_in_names_only_where_a_script_needs_them(
    text: str, allowed: bool
) -> None:
    assert (forbidden_format_char(text, multiline=False) is None) is allowed
    assert forbidden_format_char(text, multiline=False, address=True) is not None
    assert forbidden_format_char(text, multiline=True) is None


def test_the_field_names_the_character_it_refuses() -> None:
    assert load_one("name", "Ada\u202eLovelace") == [
        "Invisible or bidirectional formatting characters are not allowed (found U+202E)."
    ]


def test_multi_line_text_keeps_joiners_and_marks() -> None:
    prose = "\U0001f469\u200d\U0001f4bb \u05e9\u05dc\u05d5\u05dd\u200f\nline two\u00ad"
    assert load_one("bio", prose) == prose


def test_single_line_text_refuses_line_separators() -> None:
    assert load_one("name", "a\u2028b") == ["Control characters are not allowed."]
    assert load_one("bio", "a\u2028b") == "a\u2028b"


def test_secrets_keep_every_printable_character() -> None:
    secret = "pa\u202ess\u200b\ufeff\u2028word"
    assert load_one("password", secret) == secret


def test_published_patterns_hold_only_bmp_escapes() -> None:
    """Valid in Python and ECMAScript alike, and usable by schemathesis."""
    for field in Sample().fields.values():
        assert all(ord(c) < 0x80 for c in field.metadata["pattern"]), field.name


# One generator of what a field may hold: the published pattern must agree with the validator.
SAMPLE_CHARS = [
    chr(c) for a, b in FORMAT_RANGES for c in range(a, b + 1) if c not in SURROGATES
] + ["a", " ", "\t", "\n", "\u00e9", "\u2028", "\u3000", "\U0001f600", "\x00", "\x85"]


@pytest.mark.parametrize("field", ["name", "title", "bio", "password", "email"])
def test_the_published_pattern_is_the_enforced_rule(field: str) -> None:
    """Character by character. The exceptions: the two joiners in names and titles, which the
    pattern allows because whether one is needed depends on its neighbours, and format characters
    above the BMP, which patterns leave out (see `char_class`). (An email's pattern speaks of
    characters only: its shape is `format: email`.)"""
    pattern = re.compile(Sample().fields[field].metadata["pattern"])
    contextual = {"\u200c", "\u200d"} if field in {"name", "title"} else set()
    if field in {"name", "title", "email"}:
        contextual |= {c for c in SAMPLE_CHARS if in_ranges(ord(c), FORMAT_RANGES) and c > "\uffff"}
    chars = SAMPLE_CHARS
    if field == "email":
        chars = [c for c in SAMPLE_CHARS if c == "a" or in_ranges(ord(c), FORMAT_RANGES)]
    disagree = []
    for char in chars:
        text = f"x{char}y@example.com" if field == "email" else f"x{char}y"
        accepted = isinstance(load_one(field, text), str)
        if accepted != bool(pattern.fullmatch(text)):
            disagree.append(f"U+{ord(char):04X}")
    assert sorted(disagree) == sorted(f"U+{ord(c):04X}" for c in contextual)


# Emails ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("\uff41\uff4c\uff49\uff43\uff45@example.com", "alice@example.com"),  # fullwidth
        ("ALICE@EXAMPLE.COM", "alice@example.com"),
        ("\ufb01nance@example.com", "finance@example.com"),  # "fi" ligature
        ("\u212aelvin@example.com", "kelvin@example.com"),  # Kelvin sign
        ("W\u030a@example.com", "\u1e98@example.com"),  # composes only once lower-cased
    ],
)
def test_normalise_email(sent: str, stored: str) -> None:
    assert normalise_email(sent) == stored
    assert load_one("email", sent) == stored


@given(st.text())
def test_normalise_email_is_a_fixed_point(text: str) -> None:
    once = normalise_email(text)
    assert normalise_email(once) == once


@pytest.mark.parametrize("email", ["ad\u200bmin@example.com", "admin@exa\u200bmple.com"])
def test_email_refuses_format_characters(email: str) -> None:
    assert load_one("email", email) == [
        "Invisible or bidirectional formatting characters are not allowed (found U+200B)."
    ]
