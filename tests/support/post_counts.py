"""A user's post count (the cached `meta.total` of `GET /api/users/{id}/posts` in offset mode):
reading it through the API, locally or from a live server, and straight from the cache."""

from __future__ import annotations

import re

from flask.testing import FlaskClient

from app.posts.cache import USER_POST_COUNT_KIND, USER_POSTS_GEN
from tests.factories import Account
from tests.support.cache import entry, raw_entry
from tests.support.live import Http

COUNT_SQL = re.compile(r"\bcount\(", re.IGNORECASE)


def total(client: FlaskClient, user_id: str, headers: dict[str, str] | None = None) -> int:
    response = client.get(f"/api/users/{user_id}/posts", headers=headers or {})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "total_is_estimate" not in response.json["meta"]
    return int(response.json["meta"]["total"])


def totals(client: FlaskClient, account: Account) -> tuple[int, int]:
    """(what an anonymous caller sees, what the author sees)."""
    return total(client, account.id), total(client, account.id, account.headers)


def remote_total(http: Http, user_id: str, headers: dict[str, str] | None = None) -> int:
    status, _headers, body = http.call("GET", f"/api/users/{user_id}/posts", headers=headers)
    assert status == 200, body
    return int(body["meta"]["total"])


def generation(user_id: str, *, redis_url: str | None = None) -> bytes | None:
    kwargs = {"redis_url": redis_url} if redis_url else {}
    return raw_entry(USER_POSTS_GEN, user_id, **kwargs)


# The default PAGINATION_EXACT_COUNT_LIMIT: every count here is under it.
EXACT_COUNT_LIMIT = 100_000


def cached_count(user_id: str, part: str, *, redis_url: str | None = None) -> dict | None:
    """The count entry if it is valid (stored under the current generation), else None; the
    exact-count limit it was counted under is checked, then left out."""
    kwargs = {"redis_url": redis_url} if redis_url else {}
    stored = entry(USER_POST_COUNT_KIND, f"{user_id}:{part}", **kwargs)
    current = generation(user_id, **kwargs)
    if stored is None or current is None or stored["g"] != current.decode():
        return None
    data = dict(stored["d"])
    assert data.pop("limit") == EXACT_COUNT_LIMIT
    return data


def counting(statements: list[str]) -> list[str]:
    return [s for s in statements if COUNT_SQL.search(s) and "posts" in s]
