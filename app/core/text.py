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
    r"""The body of a regex character class for these ranges, valid in Python and in ECMAScript
    with the `u` flag (OpenAPI patterns): `\uXXXX` escapes in the BMP, the characters themselves
    above it (neither dialect shares an escape for those)."""

    def one(code: int) -> str:
        return f"\\u{code:04X}" if code <= 0xFFFF else chr(code)

    return "".join(one(a) if a == b else f"{one(a)}-{one(b)}" for a, b in ranges)


FORMAT_CLASS = char_class(FORMAT_RANGES)
BIDI_CLASS = char_class(BIDI_RANGES)
_FORMAT = re.compile(f"[{FORMAT_CLASS}]")
_BIDI = re.compile(f"[{BIDI_CLASS}]")


def forbidden_format_char(text: str, *, multiline: bool) -> str | None:
    """The first character `text` may not hold: any format character in single-line text (names,
    titles), only the bidi embeddings, overrides and isolates in multi-line text (prose in Persian,
    Hindi or with emoji needs ZWJ/ZWNJ, Thai needs ZWSP, mixed-direction text needs the marks)."""
    found = (_BIDI if multiline else _FORMAT).search(text)
    return found.group() if found else None


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
