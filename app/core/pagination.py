"""One pagination helper for every list: offset pages and keyset cursors on (created_at, id).

Cursors are opaque and tamper-evident: Fernet (AES + HMAC) over the sort key of the last row
and the list they belong to, so a client can neither forge a position nor read internal ids.

`meta.total` is exact up to `PAGINATION_EXACT_COUNT_LIMIT` rows; above it, on PostgreSQL, it is
the planner's row estimate and `meta.total_is_estimate` is true (see `_total`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import marshmallow as ma
import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken
from flask import current_app, has_app_context
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.core.errors import ValidationFailed

T = TypeVar("T")

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100
MAX_PAGE = 1_000_000
DEFAULT_EXACT_COUNT_LIMIT = 100_000
# Execution option: run the statement as `EXPLAIN (FORMAT JSON) <statement>` (see _explain_rows).
_EXPLAIN_OPTION = "postboard_explain_json"
CURSOR_MAX_LENGTH = 512
_CURSOR_RE = re.compile(r"[A-Za-z0-9_-]+")


class PageArgsSchema(ma.Schema):
    """`?page=&per_page=` (offset) or `?cursor=&per_page=` (keyset)."""

    class Meta:
        unknown = ma.EXCLUDE

    page = ma.fields.Integer(
        validate=ma.validate.Range(min=1, max=MAX_PAGE),
        metadata={"description": "1-based page number (offset mode).", "example": 1},
    )
    per_page = ma.fields.Integer(
        load_default=DEFAULT_PER_PAGE,
        validate=ma.validate.Range(min=1, max=MAX_PER_PAGE),
        metadata={"description": f"Items per page, 1 to {MAX_PER_PAGE}.", "example": 20},
    )
    cursor = ma.fields.String(
        validate=ma.validate.Length(min=1, max=CURSOR_MAX_LENGTH),
        metadata={"description": "Opaque cursor from `meta.next_cursor` (keyset mode)."},
    )

    @ma.validates_schema
    def _one_mode(self, data: dict[str, Any], **_: Any) -> None:
        if "page" in data and "cursor" in data:
            raise ma.ValidationError("Use either page or cursor, not both.", "cursor")


@dataclass(frozen=True)
class PageParams:
    per_page: int = DEFAULT_PER_PAGE
    page: int | None = None
    cursor: str | None = None
    # Lists longer than this report an estimated total (PostgreSQL only); 0 = always count.
    exact_count_limit: int = DEFAULT_EXACT_COUNT_LIMIT
    # False: the first page in keyset mode (no `page`, no count), as a cursor connection asks.
    offset: bool = True

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> PageParams:
        """From the parsed query string; the count limit from the app's config when there is one."""
        limit = DEFAULT_EXACT_COUNT_LIMIT
        if has_app_context():
            limit = current_app.config.get("PAGINATION_EXACT_COUNT_LIMIT", limit)
        return cls(
            per_page=args.get("per_page", DEFAULT_PER_PAGE),
            page=args.get("page"),
            cursor=args.get("cursor"),
            exact_count_limit=limit,
        )


@dataclass
class Page(Generic[T]):
    items: list[T]
    per_page: int
    next_cursor: str | None
    page: int | None = None
    total: int | None = None
    total_is_estimate: bool = False
    # The cursor that continues after a given item of this page (a connection's edge cursor).
    cursor_of: Callable[[T], str] | None = field(default=None, repr=False, compare=False)

    @property
    def has_next(self) -> bool:
        return self.next_cursor is not None

    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"per_page": self.per_page, "next_cursor": self.next_cursor}
        if self.page is not None:
            meta["page"] = self.page
            meta["total"] = self.total
            if self.total_is_estimate:
                meta["total_is_estimate"] = True
        return meta


class CursorCodec:
    """Encrypts and authenticates `(scope, created_at, id)`; anything else decodes to a 400."""

    def __init__(self, secret: str) -> None:
        key = hashlib.sha256(b"cursor:" + secret.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def encode(self, scope: str, created_at: datetime, row_id: int) -> str:
        payload = json.dumps([scope, created_at.isoformat(), row_id], separators=(",", ":"))
        return self._fernet.encrypt(payload.encode()).decode().rstrip("=")

    def decode(self, scope: str, token: str) -> tuple[datetime, int]:
        try:
            # Only the exact form encode() writes: base64 decoding is lenient (it skips stray
            # characters, reads '+' as '-', ignores extra '=' and unused bits), so a changed
            # cursor could otherwise still decode to the same position.
            if not _CURSOR_RE.fullmatch(token):
                raise ValueError("not a cursor")
            binary = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            if base64.urlsafe_b64encode(binary).decode().rstrip("=") != token:
                raise ValueError("not the canonical encoding of a cursor")
            raw = self._fernet.decrypt(base64.urlsafe_b64encode(binary))
            got_scope, created_at, row_id = json.loads(raw)
            if got_scope != scope or type(row_id) is not int or not 0 < row_id < 2**63:
                raise ValueError("cursor of another list, or a malformed position")
            position = datetime.fromisoformat(created_at)
            if position.tzinfo is None:  # a naive time would fail in the UTC column: a 500
                raise ValueError("cursor time has no offset")
            return position, row_id
        except (InvalidToken, ValueError, TypeError, UnicodeError) as exc:
            raise ValidationFailed(
                "The cursor is not valid for this list.",
                details=[{"field": "cursor", "message": "Invalid or tampered cursor."}],
            ) from exc


def paginate(
    session: Session,
    stmt: sa.Select[Any],
    *,
    sort_columns: tuple[Any, Any],
    params: PageParams,
    codec: CursorCodec,
    scope: str,
    count_stmt: sa.Select[Any] | None = None,
    total: Callable[[], tuple[int, bool]] | None = None,
    ascending: bool = False,
) -> Page[Any]:
    """Run `stmt` (a select of one entity) as one page, newest first on `sort_columns` (a
    timestamp and a unique integer key), or oldest first with `ascending` (an audit trail).

    Offset mode adds the total (see `_total`; or `total()` when given: `(total, is_estimate)`
    from elsewhere, e.g. a cache in front of `count_total`); keyset mode does not count and
    costs the same at any depth. Both fetch one extra row to learn whether there is a next page.
    """
    created_col, id_col = sort_columns
    if ascending:
        ordered = stmt.order_by(created_col.asc(), id_col.asc())
    else:
        ordered = stmt.order_by(created_col.desc(), id_col.desc())
    per_page = params.per_page
    page_total: int | None = None
    estimated = False
    if params.cursor is not None or not params.offset:
        if params.cursor is not None:
            created_at, row_id = codec.decode(scope, params.cursor)
            position = sa.tuple_(
                sa.literal(created_at, created_col.type), sa.literal(row_id, id_col.type)
            )
            keys = sa.tuple_(created_col, id_col)
            ordered = ordered.where(keys > position if ascending else keys < position)
        rows = list(session.scalars(ordered.limit(per_page + 1)))
        page_no = None
    else:
        page_no = params.page or 1
        rows = list(session.scalars(ordered.limit(per_page + 1).offset((page_no - 1) * per_page)))
        if total is not None:
            page_total, estimated = total()
        else:
            base = count_stmt if count_stmt is not None else stmt
            page_total, estimated = count_total(session, base, params.exact_count_limit)
    return page_of(
        rows,
        per_page,
        cursor_of=lambda row: codec.encode(
            scope, getattr(row, created_col.key), getattr(row, id_col.key)
        ),
        page=page_no,
        total=page_total,
        total_is_estimate=estimated,
    )


def page_of(
    rows: list[T],
    per_page: int,
    *,
    cursor_of: Callable[[T], str],
    page: int | None = None,
    total: int | None = None,
    total_is_estimate: bool = False,
) -> Page[T]:
    """A page from up to `per_page + 1` rows fetched in order (the extra one says there is more)."""
    items = rows[:per_page]
    next_cursor = cursor_of(items[-1]) if len(rows) > per_page else None
    return Page(
        items=items,
        per_page=per_page,
        next_cursor=next_cursor,
        page=page,
        total=total,
        total_is_estimate=total_is_estimate,
        cursor_of=cursor_of,
    )


def count_total(session: Session, base: sa.Select[Any], limit: int) -> tuple[int, bool]:
    """`(total, is_estimate)` of the rows `base` selects, as offset pages report it (`_total`)."""
    return _total(session, base.order_by(None), limit)


def _total(session: Session, base: sa.Select[Any], limit: int) -> tuple[int, bool]:
    """`(total, is_estimate)` of the rows `base` selects.

    On PostgreSQL with a limit: first the planner's row estimate for `base` (EXPLAIN, no rows
    read: pg_class.reltuples scaled to the table's current size, times the selectivity of the
    list's filters from pg_statistic, so it is right for a filtered list such as one user's or
    the published posts, where the whole table's reltuples would not be). Above the limit, that
    estimate is the answer. Otherwise a count capped at limit + 1 rows: exact for every list up
    to the limit, and never more than limit + 1 index entries read when the planner
    underestimated (then the answer is an estimate again: at least limit + 1). So a total costs
    at most one planning pass plus `limit` rows, whatever the table's size. SQLite, or limit 0:
    always the exact count.
    """
    if limit <= 0 or session.get_bind().dialect.name != "postgresql":
        return _count(session, base), False
    planned = _explain_rows(session, base)
    if planned > limit:
        return planned, True
    capped = _count(session, base.limit(limit + 1))
    if capped > limit:
        return max(planned, capped), True
    return capped, False


def _count(session: Session, base: sa.Select[Any]) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(base.subquery())) or 0


def _explain_rows(session: Session, base: sa.Select[Any]) -> int:
    """The planner's estimate of how many rows `base` returns (PostgreSQL), without running it.

    Executed through the session like any query, so the ORM applies the same criteria (the
    soft-delete filter) as the real count would; the listener below turns the statement it
    sends into `EXPLAIN (FORMAT JSON) ...` and the one row back is the plan.
    """
    probe: sa.Select[Any] = sa.select(sa.literal_column("1")).select_from(base.subquery())
    plan = session.execute(probe, execution_options={_EXPLAIN_OPTION: True}).scalar_one()
    if isinstance(plan, str):
        plan = json.loads(plan)
    return round(plan[0]["Plan"]["Plan Rows"])


@event.listens_for(Engine, "before_cursor_execute", retval=True)
def _explain_when_asked(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> tuple[str, Any]:
    if context is not None and context.execution_options.get(_EXPLAIN_OPTION):
        statement = "EXPLAIN (FORMAT JSON) " + statement
    return statement, parameters
