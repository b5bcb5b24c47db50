"""The same scenario through REST and through GraphQL: the same data, the same error codes
(contract §8). Each case: REST's status and code, GraphQL's code (and HTTP status)."""

from __future__ import annotations

from tests.factories import PASSWORD, unique
from tests.support.assertions import assert_error
from tests.support.graphql import gql, only_error
from tests.support.limits import fresh_ip, limited_app

UPDATE_POST = (
    "mutation U($id: ID!, $t: String, $v: Int) "
    "{ updatePost(id: $id, input: {title: $t}, expectedVersion: $v) { id title version } }"
)


def test_same_data(client, account):
    post = account.post_as("Same", body="x", status="published")
    rest_user = client.get(f"/api/users/{account.id}", headers=account.headers).get_json()["data"]
    rest_post = client.get(f"/api/posts/{post['id']}").get_json()["data"]
    got = gql(
        client,
        "query S($u: ID!, $p: ID!) { user(id: $u) { id username displayName bio email createdAt "
        "updatedAt version } post(id: $p) { id authorId title slug body status publishedAt "
        "createdAt updatedAt version } }",
        {"u": account.id, "p": post["id"]},
        headers=account.headers,
    ).get_json()["data"]
    snake = {
        "displayName": "display_name",
        "createdAt": "created_at",
        "updatedAt": "updated_at",
        "authorId": "author_id",
        "publishedAt": "published_at",
    }
    assert {snake.get(k, k): v for k, v in got["user"].items()} == rest_user
    assert {snake.get(k, k): v for k, v in got["post"].items()} == rest_post


def test_unauthenticated(client, account):
    post = account.post_as("Mine")
    assert_error(
        client.patch(f"/api/posts/{post['id']}", json={"title": "x"}), 401, "UNAUTHENTICATED"
    )
    only_error(gql(client, UPDATE_POST, {"id": post["id"], "t": "x"}), 200, "UNAUTHENTICATED")


def test_someone_elses_post(client, account, other):
    post = account.post_as("Mine", status="published")
    assert_error(
        client.patch(f"/api/posts/{post['id']}", json={"title": "x"}, headers=other.headers),
        403,
        "FORBIDDEN",
    )
    only_error(
        gql(client, UPDATE_POST, {"id": post["id"], "t": "x"}, headers=other.headers),
        200,
        "FORBIDDEN",
    )


def test_someone_elses_draft(client, account, other):
    draft = account.post_as("Draft")
    assert_error(client.get(f"/api/posts/{draft['id']}", headers=other.headers), 404, "NOT_FOUND")
    only_error(
        gql(
            client,
            "query D($id: ID!) { post(id: $id) { id } }",
            {"id": draft["id"]},
            headers=other.headers,
        ),
        200,
        "NOT_FOUND",
    )
    only_error(
        gql(client, UPDATE_POST, {"id": draft["id"], "t": "x"}, headers=other.headers),
        200,
        "NOT_FOUND",
    )


def test_duplicate_email(client, account):
    body = {"email": account.email.upper(), "username": unique(), "password": PASSWORD}
    rest = assert_error(client.post("/api/users", json=body), 409, "CONFLICT")
    error = only_error(
        gql(
            client, "mutation C($i: CreateUserInput!) { createUser(input: $i) { id } }", {"i": body}
        ),
        200,
        "CONFLICT",
    )
    assert (
        error["extensions"]["details"]
        == rest["details"]
        == [{"field": "email", "message": "That email is already taken."}]
    )


def test_stale_version(client, account):
    post = account.post_as("V")
    assert (
        client.patch(
            f"/api/posts/{post['id']}", json={"title": "v2"}, headers=account.headers
        ).status_code
        == 200
    )
    assert_error(
        client.patch(
            f"/api/posts/{post['id']}",
            json={"title": "x"},
            headers={**account.headers, "If-Match": '"v1"'},
        ),
        412,
        "PRECONDITION_FAILED",
    )
    only_error(
        gql(client, UPDATE_POST, {"id": post["id"], "t": "x", "v": 1}, headers=account.headers),
        200,
        "PRECONDITION_FAILED",
    )
    assert (
        client.get(f"/api/posts/{post['id']}", headers=account.headers).get_json()["data"]["title"]
        == "v2"
    )


def test_validation(client, account):
    post = account.post_as("T")
    rest = assert_error(
        client.patch(f"/api/posts/{post['id']}", json={"title": ""}, headers=account.headers),
        400,
        "VALIDATION_ERROR",
    )
    error = only_error(
        gql(client, UPDATE_POST, {"id": post["id"], "t": ""}, headers=account.headers),
        200,
        "VALIDATION_ERROR",
    )
    assert error["extensions"]["details"] == rest["details"]


def test_not_found(client):
    unknown = "5b41c513-bb2d-4f16-9d47-e36d461d8007"
    assert_error(client.get(f"/api/users/{unknown}"), 404, "NOT_FOUND")
    only_error(gql(client, f'{{ user(id: "{unknown}") {{ id }} }}'), 200, "NOT_FOUND")
    only_error(gql(client, '{ user(id: "not-a-uuid") { id } }'), 200, "NOT_FOUND")


def test_rate_limit_is_one_budget_for_both_doors(app, account):
    client = limited_app(app).test_client()
    ip = fresh_ip()
    env = {"REMOTE_ADDR": ip}
    for i in range(8):  # RATELIMIT_AUTHENTICATED: 8/minute, shared by REST and GraphQL
        if i % 2:
            response = client.get("/api/me", headers=account.headers, environ_base=env)
        else:
            response = gql(client, "{ me { id } }", headers=account.headers, environ_base=env)
        assert response.status_code == 200, (i, response.get_json())
    assert_error(
        client.get("/api/me", headers=account.headers, environ_base=env), 429, "RATE_LIMITED"
    )
    refused = gql(client, "{ me { id } }", headers=account.headers, environ_base=env)
    only_error(refused, 429, "RATE_LIMITED")
    assert int(refused.headers["Retry-After"]) > 0
    assert refused.headers["X-RateLimit-Remaining"] == "0"


def test_registration_limit_is_shared_by_post_users_and_create_user(app):
    client = limited_app(app).test_client()
    env = {"REMOTE_ADDR": fresh_ip()}

    def body():
        name = unique()
        return {"email": f"{name}@example.com", "username": name, "password": PASSWORD}

    create = "mutation C($i: CreateUserInput!) { createUser(input: $i) { id } }"
    assert client.post("/api/users", json=body(), environ_base=env).status_code == 201
    assert gql(client, create, {"i": body()}, environ_base=env).status_code == 200  # 2/minute
    assert_error(client.post("/api/users", json=body(), environ_base=env), 429, "RATE_LIMITED")
    refused = gql(client, create, {"i": body()}, environ_base=env)
    only_error(refused, 429, "RATE_LIMITED")
    assert int(refused.headers["Retry-After"]) > 0
