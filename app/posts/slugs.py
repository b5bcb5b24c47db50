"""Post slugs: `<words of the title>-<the public id in base32>`, e.g. `hello-world-6mxq...`.

Pure functions (no app, no database): the API, the backfill, migration 0004 and `flask seed` all
call `make_slug`, so every writer derives the same value. A slug is assigned once, from the title
the post has at that moment, and never changes afterwards (stable permalinks): editing the title
keeps the slug.

The words part is python-slugify's ASCII transliteration (so "Straße" gives "strasse" and
"Привет мир" gives "privet-mir"), cut at a word boundary to SLUG_WORDS_MAX characters; a title
with nothing transliterable (only emoji, say) gives "post". The suffix is the whole 128-bit public
UUID in lower-case RFC 4648 base32 (26 characters): public ids are unique, so two posts never get
the same slug, whatever their titles, with no collision check and no retry.
"""

from __future__ import annotations

import base64
import re
import uuid

from slugify import slugify

SLUG_WORDS_MAX = 60
SUFFIX_LENGTH = 26
FALLBACK_WORDS = "post"
SLUG_MIN = 1 + 1 + SUFFIX_LENGTH
SLUG_MAX = SLUG_WORDS_MAX + 1 + SUFFIX_LENGTH
# What the route accepts and the OpenAPI document publishes (anchored there by `fullmatch`).
SLUG_REGEX = rf"[a-z0-9]+(?:-[a-z0-9]+)*-[a-z2-7]{{{SUFFIX_LENGTH}}}"
_SLUG = re.compile(SLUG_REGEX)
_WORDS = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def slug_suffix(public_id: uuid.UUID | str) -> str:
    """The public id as 26 lower-case base32 characters (a bijection: unique id, unique suffix)."""
    value = public_id if isinstance(public_id, uuid.UUID) else uuid.UUID(str(public_id))
    return base64.b32encode(value.bytes).decode("ascii").rstrip("=").lower()


def slug_words(title: str) -> str:
    """The title as lower-case ASCII words joined by hyphens, at most SLUG_WORDS_MAX long."""
    words = slugify(title, max_length=SLUG_WORDS_MAX, word_boundary=True).strip("-")
    # Belt and braces: whatever a future python-slugify does, the result stays in our alphabet.
    return words if _WORDS.fullmatch(words) else FALLBACK_WORDS


def make_slug(title: str, public_id: uuid.UUID | str) -> str:
    """The slug of a post with this title and public id (deterministic, always well-formed)."""
    return f"{slug_words(title)}-{slug_suffix(public_id)}"


def is_well_formed(slug: str) -> bool:
    """True when `slug` could be one of ours (pattern and length); say 404 otherwise."""
    return SLUG_MIN <= len(slug) <= SLUG_MAX and _SLUG.fullmatch(slug) is not None
