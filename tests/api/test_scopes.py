"""Scopes everywhere (contract §9): every REST route and GraphQL field declares the scope it
needs; a token without it is 403 FORBIDDEN with `WWW-Authenticate: Bearer error=
"insufficient_scope", scope="<needed>"`. Tokens here are the service's own, minted with only
some scopes, as an app's would be (the OAuth flow that issues them is tested in test_oauth_*)."""

from __future__ import annotations

from typing import Any

import pytest
from flask_jwt_extended import create_access_token

from app.core.security import USER_SCOPES
from tests.factories import bearer, claims_of
from tests.support.assertions import assert_error


def token(app: Any, account: Any, *scopes: str) -> dict[str, str]:
    """An access token of `account`'s login family carrying only `scopes`."""
    family = claims_of(account.tokens["access_token"])["fam"]
    with app.app_context():
        made = create_access_token(
            identity=account.id, additional_claims={"scope": list(scopes), "fam": family}
        )
    return bearer(made)


def assert_insufficient(response: Any, scope: str) -> None:
    assert_error(response, 403, "FORBIDDEN")
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer error="insufficient_scope", scope="{scope}"'
    )


def test_first_party_login_carries_every_user_scope(account, admin):
    assert claims_of(account.tokens["access_token"])["scope"] == list(USER_SCOPES)
    assert claims_of(admin.tokens["access_token"])["scope"] == [*USER_SCOPES, "admin"]


@pytest.mark.parametrize(
    ("method", "path", "body", "scope"),
    [
        ("patch", "/api/users/{user}", {"bio": "x"}, "users:write"),
        ("put", "/api/users/{user}", {"username": "x", "display_name": "x", "bio": "x"},
         "users:write"),
        ("delete", "/api/users/{user}", None, "users:write"),
        ("get", "/api/users/{user}/events", None, "profile"),
        ("post", "/api/users/{user}/posts", {"title": "t", "body": "b"}, "posts:write"),
        ("patch", "/api/posts/{post}", {"title": "t2"}, "posts:write"),
        ("put", "/api/posts/{post}", {"title": "t", "body": "b", "status": "draft"},
         "posts:write"),
        ("delete", "/api/posts/{post}", None, "posts:write"),
        ("get", "/api/posts/{post}/events", None, "drafts:read"),
        ("get", "/api/webhooks", None, "webhooks"),
        ("post", "/api/webhooks", {"url": "https://example.com/h", "events": ["post.created"]},
         "webhooks"),
    ],
)  # fmt: skip
def test_a_route_refuses_a_token_without_its_scope(app, client, account, method, path, body,
                                                   scope):  # fmt: skip
    post = account.post_as(status="draft")
    url = path.format(user=account.id, post=post["id"])
    others = [s for s in USER_SCOPES if s != scope]
    kwargs: dict[str, Any] = {"headers": token(app, account, *others)}
    if body is not None:
        kwargs["json"] = body
    assert_insufficient(getattr(client, method)(url, **kwargs), scope)
    assert client.get(f"/api/posts/{post['id']}", headers=account.headers).status_code == 200


def test_reads_of_public_data_need_no_scope(app, client, account):
    post = account.post_as(status="published")
    bare = token(app, account)
    assert client.get(f"/api/posts/{post['id']}", headers=bare).status_code == 200
    assert client.get(f"/api/users/{account.id}", headers=bare).status_code == 200
    me = client.get("/api/me", headers=bare)
    assert me.status_code == 200
    assert "email" not in me.get_json()["data"]  # the email needs `profile`
    with_profile = client.get("/api/me", headers=token(app, account, "profile"))
    assert with_profile.get_json()["data"]["email"] == account.email


def test_own_drafts_need_drafts_read(app, client, account):
    draft = account.post_as(status="draft")
    assert_error(client.get(f"/api/posts/{draft['id']}", headers=token(app, account)), 404,
                 "NOT_FOUND")  # fmt: skip
    allowed = client.get(f"/api/posts/{draft['id']}", headers=token(app, account, "drafts:read"))
    assert allowed.status_code == 200
    listed = client.get(f"/api/users/{account.id}/posts", headers=token(app, account))
    assert draft["id"] not in [p["id"] for p in listed.get_json()["data"]]


def test_graphql_mutation_without_its_scope_is_forbidden(app, client, account):
    query = 'mutation { createPost(userId: "%s", input: {title: "t", body: "b"}) { id } }'
    response = client.post(
        "/graphql",
        json={"query": query % account.id},
        headers=token(app, account, "profile", "drafts:read"),
    )
    assert response.status_code == 200  # a field error, as every GraphQL field error
    body = response.get_json()
    assert body["data"]["createPost"] is None
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert response.headers["WWW-Authenticate"] == (
        'Bearer error="insufficient_scope", scope="posts:write"'
    )
    allowed = client.post(
        "/graphql", json={"query": query % account.id}, headers=token(app, account, "posts:write")
    )
    assert allowed.get_json()["data"]["createPost"]["id"]


def test_graphql_email_needs_profile(app, client, account):
    query = {"query": "{ me { id email } }"}
    bare = client.post("/graphql", json=query, headers=token(app, account)).get_json()
    assert bare["data"]["me"] == {"id": account.id, "email": None}
    full = client.post("/graphql", json=query, headers=token(app, account, "profile")).get_json()
    assert full["data"]["me"]["email"] == account.email


def test_openapi_documents_the_oauth2_scheme_and_each_routes_scope(client):
    spec = client.get("/api/openapi.json").get_json()
    flow = spec["components"]["securitySchemes"]["oauth2"]["flows"]["authorizationCode"]
    assert set(flow["scopes"]) == set(USER_SCOPES)
    assert flow["tokenUrl"] == "/oauth/token"
    patch = spec["paths"]["/api/posts/{post_id}"]["patch"]
    assert {"oauth2": ["posts:write"]} in patch["security"]
    assert {"bearerAuth": []} in patch["security"]
