"""One request of every kind the API answers, for checks that must hold on every response."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from tests.factories import unique

MIB = 1024 * 1024


def exchange(client, account, other, headers: dict[str, str]) -> Iterator[tuple[str, int, Any]]:
    """One request of every kind the API answers, each with `headers` added.

    Yields (name, expected status, response).
    """
    auth = {**account.headers, **headers}
    post = account.post_as("Mine", status="published")
    theirs = other.post_as("Theirs", status="published")
    item = f"/api/posts/{post['id']}"

    yield "200 list", 200, client.get("/api/posts", headers=headers)
    yield "200 item", 200, client.get(item, headers=headers)
    yield "200 me", 200, client.get("/api/me", headers=auth)
    yield (
        "201",
        201,
        client.post(f"/api/users/{account.id}/posts", json={"title": "New"}, headers=auth),
    )
    etag = client.get(item).headers["ETag"]
    yield "304", 304, client.get(item, headers={**headers, "If-None-Match": etag})
    yield "400 query", 400, client.get("/api/posts?per_page=0", headers=headers)
    yield (
        "400 json",
        400,
        client.patch(item, data="{", content_type="application/json", headers=auth),
    )
    yield "401", 401, client.get("/api/me", headers=headers)
    yield "403", 403, client.patch(f"/api/posts/{theirs['id']}", json={"title": "x"}, headers=auth)
    yield "404 route", 404, client.get("/api/nope", headers=headers)
    yield "404 item", 404, client.get(f"/api/posts/{uuid.uuid4()}", headers=headers)
    yield "405", 405, client.delete("/api/posts", headers=headers)
    taken = {"email": f"{unique()}@example.com", "username": account.user["username"]}
    yield (
        "409",
        409,
        client.post("/api/users", json={**taken, "password": "long enough"}, headers=headers),
    )
    yield (
        "412",
        412,
        client.patch(item, json={"title": "x"}, headers={**auth, "If-Match": '"v99"'}),
    )
    yield (
        "413",
        413,
        client.patch(item, json={"body": "x" * (MIB + 1)}, headers=auth),
    )
    yield "415", 415, client.patch(item, data="title=x", content_type="text/plain", headers=auth)
    yield "204", 204, client.delete(item, headers=auth)
