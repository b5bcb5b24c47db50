"""Optimistic concurrency: ETags are resource versions; If-Match names the versions it accepts."""

from __future__ import annotations

from collections.abc import Collection

from app.core.errors import PreconditionFailed


def etag_for(version: int) -> str:
    """The strong ETag of a resource at `version` (quoted, as it goes in the header)."""
    return f'"v{version}"'


def parse_if_match(header: str | None) -> set[int] | None:
    """Versions named by an If-Match header; None when absent or `*` (any current state).

    Anything that is not one of our ETags names no version, so it can never match (412).
    """
    if header is None or header.strip() == "*":
        return None
    versions: set[int] = set()
    for part in header.split(","):
        tag = part.strip()
        if tag.startswith('"v') and tag.endswith('"') and tag[2:-1].isdigit() and len(tag) < 24:
            versions.add(int(tag[2:-1]))
    return versions


def check_version(current: int, if_match: Collection[int] | None) -> None:
    """Refuse (412) a write whose If-Match does not name the resource's current version."""
    if if_match is not None and current not in if_match:
        raise PreconditionFailed()
