"""Helpers the routes share: envelopes, ETags and conditional GETs, Link headers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from flask import Response, current_app, request

from app.core.conditional import etag_for, none_match, parse_if_match
from app.core.pagination import CursorCodec, Page, PageParams


def cursor_codec() -> CursorCodec:
    codec = current_app.extensions.get("cursor_codec")
    if codec is None:
        codec = current_app.extensions["cursor_codec"] = CursorCodec(
            current_app.config["SECRET_KEY"]
        )
    return codec


def if_match() -> set[int] | None:
    return parse_if_match(request.headers.get("If-Match"))


def single(
    view: dict[str, Any],
    version: int,
    *,
    status: int = 200,
    location: str | None = None,
    variant: str = "",
) -> Any:
    """`{"data": view}` with ETag and Cache-Control; a matching If-None-Match on GET is a 304."""
    etag = etag_for(version, variant)
    headers = {
        "ETag": etag,
        "Cache-Control": "private, no-cache",
        "Vary": "Authorization",
    }
    if location:
        headers["Location"] = location
    if request.method in ("GET", "HEAD") and none_match(request.headers.get("If-None-Match"), etag):
        return Response(status=304, headers=headers)
    return {"data": view}, status, headers


def single_json(
    view: dict[str, Any],
    version: int,
    *,
    status: int = 200,
    location: str | None = None,
    variant: str = "",
) -> Any:
    """Like `single`, for a view that is already JSON-ready (a resource's one representation,
    cached or fresh): encoded directly, not through the response schema (which documents it)."""
    return _as_json(single(view, version, status=status, location=location, variant=variant))


def listing_json(page: Page[Any], views: list[dict[str, Any]]) -> Any:
    """`listing` for JSON-ready views."""
    return _as_json(listing(page, views))


def conditional_listing_json(
    page: Page[Any], views: list[dict[str, Any]], identities: Iterable[Any]
) -> Any:
    """`listing_json` of immutable items (events) with a weak ETag over what the page holds:
    the items' identities and the meta but the cursor (encrypted anew on every answer, so the
    bytes differ while the page is the same). A matching If-None-Match on GET is a 304."""
    meta = {k: v for k, v in page.meta().items() if k != "next_cursor"}
    seen = json.dumps([[str(i) for i in identities], meta, page.has_next], sort_keys=True)
    etag = f'"l{hashlib.sha256(seen.encode()).hexdigest()[:32]}"'
    headers = {"ETag": f"W/{etag}", "Cache-Control": "private, no-cache", "Vary": "Authorization"}
    if request.method in ("GET", "HEAD") and none_match(request.headers.get("If-None-Match"), etag):
        return Response(status=304, headers=headers)
    response = listing_json(page, views)
    response.headers.update(headers)
    return response


def _as_json(result: Any) -> Any:
    if isinstance(result, Response):
        return result
    body, status, headers = result
    response = current_app.json.response(body)
    response.status_code = status
    response.headers.update(headers)
    return response


def listing(page: Page[Any], views: list[dict[str, Any]]) -> Any:
    """`{"data": [...], "meta": {...}}` with a `Link: <...>; rel="next"` when there is more."""
    headers = {}
    if page.next_cursor is not None:
        args = {k: v for k, v in request.args.items() if k not in ("page", "cursor", "per_page")}
        if page.page is not None:
            args.update(page=str(page.page + 1), per_page=str(page.per_page))
        else:
            args.update(cursor=page.next_cursor, per_page=str(page.per_page))
        headers["Link"] = f'<{request.base_url}?{urlencode(args)}>; rel="next"'
    return {"data": views, "meta": page.meta()}, 200, headers


def page_params(args: dict[str, Any]) -> PageParams:
    return PageParams.from_args(args)
