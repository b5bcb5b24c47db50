"""Optimistic concurrency: ETags are resource versions; If-Match names the versions it accepts."""

from __future__ import annotations

from collections.abc import Collection

from app.core.errors import PreconditionFailed


def etag_for(version: int, variant: str = "") -> str:
    """The strong ETag of a resource at `version` (quoted, as it goes in the header).

    `variant` tells apart representations of the same state (a user with or without the email),
    so a 304 never confirms a representation the client does not hold.
    """
    return f'"v{version}-{variant}"' if variant else f'"v{version}"'


def parse_if_match(header: str | None) -> set[int] | None:
    """Versions named by an If-Match header; None when absent or `*` (any current state).

    Anything that is not one of our ETags names no version, so it can never match (412).
    """
    if header is None or header.strip() == "*":
        return None
    versions: set[int] = set()
    for part in header.split(","):
        tag = part.strip()
        if not (tag.startswith('"v') and tag.endswith('"') and len(tag) < 40):
            continue
        number = tag[2:-1].split("-", 1)[0]  # any variant names the same version
        if number.isdigit() and len(number) < 19:
            versions.add(int(number))
    return versions


def check_version(current: int, if_match: Collection[int] | None) -> None:
    """Refuse (412) a write whose If-Match does not name the resource's current version."""
    if if_match is not None and current not in if_match:
        raise PreconditionFailed()
