"""Text rules shared by every schema: which characters a field may hold, and an email's one form.

Spoofing works through characters that change how text looks without showing themselves:
bidirectional controls (U+202E turns `moc.evil` into `live.com` on screen) and invisible format
characters (U+200B makes `admin` and `ad\u200bmin` two different, identical-looking names).
"""

from __future__ import annotations

import re
import unicodedata

# Every code point of Unicode category Cf ("format": invisible characters that steer rendering),
# as of Unicode 15.1 (a unit test checks the running Python's database against this table, so a
# newer Unicode with new format characters fails loudly instead of letting them through).
FORMAT_RANGES: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD),  # soft hyphen
    (0x0600, 0x0605),  # Arabic number signs
    (0x061C, 0x061C),  # Arabic letter mark (bidi)
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),  # Mongolian vowel separator
    (0x200B, 0x200F),  # zero-width space, ZWNJ, ZWJ, LRM, RLM
    (0x202A, 0x202E),  # bidi embeddings and overrides
    (0x2060, 0x2064),  # word joiner, invisible operators
    (0x2066, 0x206F),  # bidi isolates, deprecated format characters
    (0xFEFF, 0xFEFF),  # zero-width no-break space (BOM)
    (0xFFF9, 0xFFFB),  # interlinear annotation
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),  # Egyptian hieroglyph format controls
    (0x1BCA0, 0x1BCA3),  # shorthand format controls
    (0x1D173, 0x1D17A),  # musical symbol format controls
    (0xE0001, 0xE0001),  # language tag
    (0xE0020, 0xE007F),  # tag characters
)
# Bidi embeddings, overrides and isolates: they reorder every character up to their end (or the
# end of the paragraph), so even long prose refuses them. The bidi *marks* (U+200E, U+200F,
# U+061C) only steer the characters next to them and stay allowed in multi-line text.
BIDI_RANGES: tuple[tuple[int, int], ...] = ((0x202A, 0x202E), (0x2066, 0x2069))


def char_class(ranges: tuple[tuple[int, int], ...]) -> str:
    r"""The body of a regex character class for the BMP part of these ranges, as `\uXXXX` escapes:
    valid in Python and in ECMAScript with or without the `u` flag (OpenAPI patterns). Code
    points above the BMP are left out: no escape for them is shared by both dialects, a literal
    range of them is a syntax error without `u`, and schemathesis refuses a pattern holding
    them. The validator still refuses those (tag characters and the like); only the published
    pattern does not say so."""

    def one(code: int) -> str:
        return f"\\u{code:04X}"

    return "".join(one(a) if a == b else f"{one(a)}-{one(b)}" for a, b in ranges if b <= 0xFFFF)


ZWNJ, ZWJ = "\u200c", "\u200d"
# Names and titles may hold the two joiners where a script needs them (see `_joiner_needed`), so
# their published pattern leaves those two out; every other format character is refused.
LINE_RANGES = tuple(
    piece
    for a, b in FORMAT_RANGES
    for piece in (((0x200B, 0x200B), (0x200E, 0x200F)) if (a, b) == (0x200B, 0x200F) else ((a, b),))
)
FORMAT_CLASS = char_class(FORMAT_RANGES)
LINE_CLASS = char_class(LINE_RANGES)
BIDI_CLASS = char_class(BIDI_RANGES)


def _python_class(ranges: tuple[tuple[int, int], ...]) -> str:
    """The whole ranges, for the validator's own (Python) expressions."""
    return "".join(re.escape(chr(a)) + "-" + re.escape(chr(b)) for a, b in ranges)


_FORMAT = re.compile(f"[{_python_class(FORMAT_RANGES)}]")
_BIDI = re.compile(f"[{_python_class(BIDI_RANGES)}]")
# Scripts whose letters join (Arabic, Syriac, N'Ko, Mongolian and their presentation forms): a
# ZWNJ between two of their letters is visible (it breaks the join) and Persian spells with it.
_JOINING_SCRIPTS = (
    (0x0600, 0x08FF),
    (0x1800, 0x18AF),
    (0xFB50, 0xFDFF),
    (0xFE70, 0xFEFF),
)
_VIRAMA = 9  # canonical combining class of Indic viramas: ZWJ/ZWNJ after one pick a conjunct form
_EMOJI_MODIFIERS = (0x1F3FB, 0x1F3FF)  # skin tones
_VS16 = "\ufe0f"  # emoji presentation selector


def _neighbour(text: str, index: int, step: int) -> str:
    """The nearest character before (step -1) or after (+1) `index` that is not a combining mark
    (marks sit between a letter and a joiner without changing what the joiner does)."""
    index += step
    while 0 <= index < len(text) and unicodedata.category(text[index]) in {"Mn", "Me"}:
        if step < 0 and unicodedata.combining(text[index]) == _VIRAMA:
            return text[index]
        index += step
    return text[index] if 0 <= index < len(text) else ""


def _joining_letter(char: str) -> bool:
    return (
        bool(char)
        and unicodedata.category(char).startswith("L")
        and any(a <= ord(char) <= b for a, b in _JOINING_SCRIPTS)
    )


def _emoji(char: str, *, before: bool) -> bool:
    if not char:
        return False
    if unicodedata.category(char) == "So":
        return True
    return before and (char == _VS16 or _EMOJI_MODIFIERS[0] <= ord(char) <= _EMOJI_MODIFIERS[1])


def _joiner_needed(text: str, index: int) -> bool:
    """Is the ZWJ/ZWNJ at `index` one a script needs (the contexts of RFC 5892's CONTEXTJ rules,
    plus emoji ZWJ sequences), rather than an invisible character slipped between letters?"""
    before, after = _neighbour(text, index, -1), _neighbour(text, index, +1)
    if before and unicodedata.combining(before) == _VIRAMA:
        return True  # Devanagari, Bengali, ...: the half-form or the explicit virama
    if text[index] == ZWNJ:
        return _joining_letter(before) and _joining_letter(after)  # Persian: ketab ZWNJ ha
    return _emoji(before, before=True) and _emoji(after, before=False)  # family, flags, jobs


def forbidden_format_char(text: str, *, multiline: bool, address: bool = False) -> str | None:
    """The first character `text` may not hold.

    Single-line text (names, titles): every format character, except a ZWJ or ZWNJ where a script
    needs it. An `address` (email): every format character. Multi-line text (bios, bodies): only
    the bidi embeddings, overrides and isolates, since prose needs the rest (ZWJ/ZWNJ in Persian,
    Indic scripts and emoji, ZWSP in Thai, the bidi marks in mixed-direction text)."""
    if multiline:
        found = _BIDI.search(text)
        return found.group() if found else None
    for match in _FORMAT.finditer(text):
        char = match.group()
        if address or char not in (ZWNJ, ZWJ) or not _joiner_needed(text, match.start()):
            return char
    return None


def format_char_message(char: str) -> str:
    return (
        f"Invisible or bidirectional formatting characters are not allowed "
        f"(found U+{ord(char):04X})."
    )


def normalise_email(email: str) -> str:
    """An address's one stored and compared form: NFKC (fullwidth U+FF41 is `a`, ligatures split),
    then lower-cased as before, then NFKC again (lower-casing can un-normalise a few letters), so
    the result is a fixed point and equal-looking addresses are equal strings."""
    folded = unicodedata.normalize("NFKC", email).lower()
    return unicodedata.normalize("NFKC", folded)
