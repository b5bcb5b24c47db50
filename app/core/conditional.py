"""Optimistic concurrency: ETags are resource versions; If-Match names the versions it accepts.

Both conditional headers are read with RFC 9110's grammar (`*`, or a list of `"tag"` / `W/"tag"`).
A value that does not parse names no tag of ours, so it never matches: a write under a malformed
If-Match is refused (412) and a GET under a malformed If-None-Match gets the full 200.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from app.core.errors import PreconditionFailed

_TAG = r'(?:W/)?"[!#-~\u0080-\u00ff]*"'
_LIST = re.compile(rf"^(\*|{_TAG}([ \t]*,[ \t]*{_TAG})*)$")
_MAX = 4096
_EACH = re.compile(r'(W/)?"([^"]*)"')
_OURS = re.compile(r"v([0-9]{1,18})(?:-[a-z]+)?")


def etag_for(version: int, variant: str = "") -> str:
    """The strong ETag of a resource at `version` (quoted, as it goes in the header).

    `variant` tells apart representations of the same state (a user with or without the email),
    so a 304 never confirms a representation the client does not hold.
    """
    return f'"v{version}-{variant}"' if variant else f'"v{version}"'


def _tags(header: str) -> list[tuple[bool, str]] | None:
    """[(weak, opaque tag)], or None for `*`; a malformed header names no tag at all."""
    value = header.strip()
    if len(value) > _MAX or not _LIST.match(value):
        return []
    if value == "*":
        return None
    return [(bool(weak), tag) for weak, tag in _EACH.findall(value)]


def parse_if_match(header: str | None) -> set[int] | None:
    """Versions named by an If-Match header; None when absent or `*` (any current state).

    If-Match compares strongly: a weak tag, or a tag that is not one of ours, never matches.
    """
    if header is None:
        return None
    tags = _tags(header)
    if tags is None:
        return None
    versions: set[int] = set()
    for weak, tag in tags:
        ours = _OURS.fullmatch(tag)
        if ours and not weak:
            versions.add(int(ours.group(1)))
    return versions


def none_match(header: str | None, etag: str) -> bool:
    """True when If-None-Match names `etag` (weak comparison) or is `*`: answer 304."""
    if header is None:
        return False
    tags = _tags(header)
    return tags is None or any(f'"{tag}"' == etag for _weak, tag in tags)


def check_version(current: int, if_match: Collection[int] | None) -> None:
    """Refuse (412) a write whose If-Match does not name the resource's current version."""
    if if_match is not None and current not in if_match:
        raise PreconditionFailed()
