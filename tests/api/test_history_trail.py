"""History (contract §8), the audit trails: `GET /api/users/{id}/events` and
`GET /api/posts/{id}/events`: who may read them, both pagination modes, ETags, limits, OpenAPI.
"""

from __future__ import annotations

from tests.api.test_pagination import parse_link, walk_cursor
from tests.support.assertions import assert_error
from tests.support.history import EVENT_KEYS

# Audit trail: who may read it --------------------------------------------------------------------


def test_audit_trail_permissions(client, account, other, admin) -> None:
    published = account.post_as("Out", status="published")
    draft = account.post_as("In progress")
    user_path = f"/api/users/{account.id}/events"
    for path in (
        user_path,
        f"/api/posts/{published['id']}/events",
        f"/api/posts/{draft['id']}/events",
    ):
        assert client.get(path, headers=account.headers).status_code == 200
        assert client.get(path, headers=admin.headers).status_code == 200
        assert_error(client.get(path), 401, "UNAUTHENTICATED")
    assert_error(client.get(user_path, headers=other.headers), 403, "FORBIDDEN")
    assert_error(
        client.get(f"/api/posts/{published['id']}/events", headers=other.headers), 403, "FORBIDDEN"
    )
    # someone else's draft is as absent as for a reader; an unknown id is 404
    assert_error(
        client.get(f"/api/posts/{draft['id']}/events", headers=other.headers), 404, "NOT_FOUND"
    )
    unknown = "00000000-0000-4000-8000-000000000000"
    for path in (f"/api/users/{unknown}/events", f"/api/posts/{unknown}/events"):
        assert_error(client.get(path, headers=admin.headers), 404, "NOT_FOUND")
    assert_error(
        client.get("/api/posts/not-a-uuid/events", headers=admin.headers), 404, "NOT_FOUND"
    )


def test_history_outlives_a_delete_for_its_owner_and_admins(client, account, other, admin) -> None:
    post = account.post_as("Short-lived", status="published")
    assert client.delete(f"/api/posts/{post['id']}", headers=account.headers).status_code == 204
    path = f"/api/posts/{post['id']}/events"
    assert [e["type"] for e in client.get(path, headers=account.headers).json["data"]][-1] == (
        "post.deleted"
    )
    assert_error(client.get(path, headers=other.headers), 404, "NOT_FOUND")
    assert client.delete(f"/api/users/{other.id}", headers=other.headers).status_code == 204
    assert client.get(f"/api/users/{other.id}/events", headers=admin.headers).status_code == 200
    assert_error(
        client.get(f"/api/users/{other.id}/events", headers=account.headers), 404, "NOT_FOUND"
    )


# Audit trail: pages, ETags, limits ---------------------------------------------------------------


def test_audit_trail_pages_oldest_first_in_both_modes(client, account) -> None:
    post = account.post_as("v1")
    for n in range(2, 8):
        assert (
            client.patch(
                f"/api/posts/{post['id']}", json={"title": f"v{n}"}, headers=account.headers
            ).status_code
            == 200
        )
    path = f"/api/posts/{post['id']}/events"
    first = client.get(path, query_string={"per_page": 3}, headers=account.headers)
    assert first.json["meta"]["page"] == 1
    assert first.json["meta"]["total"] == 7
    assert [e["version"] for e in first.json["data"]] == [1, 2, 3]
    assert parse_link(first) is not None
    third = client.get(path, query_string={"per_page": 3, "page": 3}, headers=account.headers)
    assert [e["version"] for e in third.json["data"]] == [7]
    assert third.json["meta"]["next_cursor"] is None
    assert parse_link(third) is None
    walked = walk_cursor(client, path, 2, headers=account.headers)
    assert [e["version"] for e in walked] == [1, 2, 3, 4, 5, 6, 7]
    occurred = [e["occurred_at"] for e in walked]
    assert occurred == sorted(occurred)
    tampered = client.get(
        path,
        query_string={"cursor": "x" + first.json["meta"]["next_cursor"][1:]},
        headers=account.headers,
    )
    assert_error(tampered, 400, "VALIDATION_ERROR")
    # a cursor of another list is refused too
    other_list = client.get("/api/posts?per_page=1&page=1").json["meta"]["next_cursor"]
    if other_list:
        assert (
            client.get(
                path, query_string={"cursor": other_list}, headers=account.headers
            ).status_code
            == 400
        )
    assert_error(
        client.get(path, query_string={"per_page": 101}, headers=account.headers),
        400,
        "VALIDATION_ERROR",
    )


def test_audit_trail_etag_gives_304_until_a_new_event(client, account) -> None:
    path = f"/api/users/{account.id}/events"
    first = client.get(path, headers=account.headers)
    etag = first.headers["ETag"]
    assert etag.startswith('W/"')
    assert first.headers["Cache-Control"] == "private, no-cache"
    again = client.get(path, headers={**account.headers, "If-None-Match": etag})
    assert again.status_code == 304
    assert again.get_data() == b""
    assert (
        client.patch(
            f"/api/users/{account.id}", json={"bio": "new"}, headers=account.headers
        ).status_code
        == 200
    )
    changed = client.get(path, headers={**account.headers, "If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag


def test_audit_trail_is_rate_limited(make_app, make_account) -> None:
    limited = make_app(RATELIMIT_ENABLED=True, RATELIMIT_AUTHENTICATED="3/minute")
    client = limited.test_client()
    from tests import factories

    account = factories.make_account(client, limited)
    path = f"/api/users/{account.id}/events"
    statuses = []
    for _ in range(4):
        response = client.get(path, headers=account.headers)
        assert "X-RateLimit-Remaining" in response.headers
        statuses.append(response.status_code)
    assert statuses[-1] == 429


def test_history_is_in_the_openapi_document(client) -> None:
    spec = client.get("/api/openapi.json").json
    paths = spec["paths"]
    for path in ("/api/users/{user_id}/events", "/api/posts/{post_id}/events"):
        get = paths[path]["get"]
        names = {p["name"] for p in get["parameters"]}
        assert {"page", "per_page", "cursor"} <= names
        assert {"200", "304", "400", "401", "403", "404", "429"} <= set(get["responses"])
    for path in ("/api/users/{user_id}", "/api/posts/{post_id}"):
        (param,) = [p for p in paths[path]["get"]["parameters"] if p["name"] == "as_of"]
        assert param["in"] == "query"
        assert param["schema"]["format"] == "date-time"
    event = spec["components"]["schemas"]["Event"]
    assert set(event["properties"]) == EVENT_KEYS
