"""`first` / `after` arguments as the REST list's `per_page` / `cursor` (the same bounds, the
same cursors: a REST `next_cursor` continues a GraphQL connection and the reverse)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from app.core.errors import ValidationFailed
from app.core.pagination import CURSOR_MAX_LENGTH, MAX_PER_PAGE, PageParams


def page_params(first: int, after: str | None) -> PageParams:
    """Keyset pages of 1 to MAX_PER_PAGE items (no count: a connection has no `total`)."""
    problems = []
    if not 1 <= first <= MAX_PER_PAGE:
        problems.append(
            {
                "field": "first",
                "message": f"Must be greater than or equal to 1 and less than or equal to "
                f"{MAX_PER_PAGE}.",
            }
        )
    if after is not None and not 1 <= len(after) <= CURSOR_MAX_LENGTH:
        problems.append(
            {"field": "after", "message": f"Length must be between 1 and {CURSOR_MAX_LENGTH}."}
        )
    if problems:
        raise ValidationFailed(details=problems)
    return PageParams(per_page=first, cursor=after, offset=False)


@contextmanager
def cursor_named_after() -> Iterator[None]:
    """A refused cursor names the argument GraphQL calls it by (`after`, REST's `cursor`)."""
    try:
        yield
    except ValidationFailed as error:
        error.details = [
            {**d, "field": "after"} if d.get("field") == "cursor" else d for d in error.details
        ]
        raise
