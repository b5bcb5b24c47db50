"""Kept documents and cache reads ahead (docs/graphql.md, "Speed"): a document is parsed and
validated once per text, yet every request is still answered for its own viewer, variables and
bounds; the kept documents are bounded; the root fields' cache reads come in the pipeline's one
Redis round trip and still give the current state."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from flask_jwt_extended import create_access_token

from app.core import prefetch
from app.core.cache import app_cache
from app.graphql.admission import Documents, documents
from app.graphql.reads_ahead import root_reads
from app.graphql.schema import schema
from app.posts.cache import POST_KIND
from app.users.cache import USER_KIND
from tests.factories import bearer, claims_of, unique
from tests.support.backends import needs_redis
from tests.support.graphql import gql, only_error

GRAPHQL = schema._schema


def fresh(query: str) -> str:
    """`query` as a text no other test sent (documents are kept by their text)."""
    return f"{query} # {unique()}"


def token(app: Any, account: Any, *scopes: str) -> dict[str, str]:
    """An access token of `account`'s login family carrying only `scopes`."""
    family = claims_of(account.tokens["access_token"])["fam"]
    with app.app_context():
        made = create_access_token(
            identity=account.id, additional_claims={"scope": list(scopes), "fam": family}
        )
    return bearer(made)


def test_a_kept_document_answers_each_viewer_by_their_own_rights(app, client, account, other):
    query = fresh("query U($id: ID!) { user(id: $id) { id email } }")
    mine = {"id": account.id}
    assert documents.get(GRAPHQL, query) is None
    assert gql(client, query, mine, headers=account.headers).get_json()["data"]["user"] == {
        "id": account.id,
        "email": account.email,
    }
    assert documents.get(GRAPHQL, query) is not None  # kept: the next ones reuse it
    assert gql(client, query, mine, headers=other.headers).get_json()["data"]["user"] == {
        "id": account.id,
        "email": None,
    }
    assert gql(client, query, mine).get_json()["data"]["user"]["email"] is None
    no_profile = gql(client, query, mine, headers=token(app, account))
    assert no_profile.get_json()["data"]["user"]["email"] is None  # email needs `profile`
    with_profile = gql(client, query, mine, headers=token(app, account, "profile"))
    assert with_profile.get_json()["data"]["user"]["email"] == account.email


def test_a_kept_document_still_needs_a_token_and_its_scope(app, client, account):
    me = fresh("{ me { id } }")
    assert gql(client, me, headers=account.headers).get_json() == {
        "data": {"me": {"id": account.id}}
    }
    only_error(gql(client, me), 200, "UNAUTHENTICATED")
    write = fresh('mutation W($id: ID!) { updateUser(id: $id, input: {bio: "x"}) { bio } }')
    assert gql(client, write, {"id": account.id}, headers=account.headers).status_code == 200
    refused = gql(client, write, {"id": account.id}, headers=token(app, account, "profile"))
    only_error(refused, 200, "FORBIDDEN")


def test_the_same_document_with_other_variables_gives_their_answers(client, make_account):
    people = [make_account() for _ in range(3)]
    query = fresh("query U($id: ID!) { user(id: $id) { id username } }")
    for _ in range(2):  # the second pass: kept, and read ahead
        for person in people:
            got = gql(client, query, {"id": person.id}).get_json()
            assert got == {"data": {"user": {"id": person.id, "username": person.user["username"]}}}
    missing = gql(client, query, {"id": str(uuid.uuid4())})
    only_error(missing, 200, "NOT_FOUND")


def test_the_cost_bound_weighs_each_requests_variables(client):
    query = fresh(
        "query Q($n: Int!) { users(first: $n) { edges { node { posts(first: $n) "
        "{ edges { node { id } } } } } } }"
    )
    assert gql(client, query, {"n": 5}).status_code == 200
    refused = gql(client, query, {"n": 100})
    only_error(refused, 400, "VALIDATION_ERROR")
    assert "costs" in refused.get_json()["errors"][0]["message"]
    assert gql(client, query, {"n": 5}).status_code == 200


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("{ users { edges { node { posts { edges { node { author { posts { edges { node "
         "{ author { id } } } } } } } } } } } }", "depth"),
        ("{ " + " ".join(f"a{i}: me {{ id }}" for i in range(16)) + " }", "aliases"),
        ("{ " + " ".join("__typename" for _ in range(2100)) + " }", "token"),
    ],
)  # fmt: skip
def test_an_over_limit_document_is_refused_every_time(client, query, words):
    query = fresh(query)
    for _ in range(3):
        refused = gql(client, query)
        only_error(refused, 400, "VALIDATION_ERROR")
        assert words in refused.get_json()["errors"][0]["message"].lower()
    kept = documents.get(GRAPHQL, query)
    if words == "token":
        assert kept is None  # it never parsed: nothing to keep
    else:
        assert kept is not None
        assert kept.errors  # kept with its errors


def test_kept_documents_are_bounded_and_the_least_recently_used_go_first():
    kept = Documents(size=3)
    texts = [f"{{ me {{ id }} }} # {i}" for i in range(4)]
    for text in texts[:3]:
        kept.admit(GRAPHQL, text)
    assert kept.get(GRAPHQL, texts[0]) is not None  # used again: now the most recent
    kept.admit(GRAPHQL, texts[3])
    assert len(kept) == 3
    assert kept.get(GRAPHQL, texts[1]) is None  # the least recently used, dropped
    assert all(kept.get(GRAPHQL, t) is not None for t in (texts[0], texts[2], texts[3]))
    assert kept.admit(GRAPHQL, texts[3]) is kept.get(GRAPHQL, texts[3])  # parsed once
    assert len(documents) <= documents.size


def test_root_reads_name_the_entries_of_a_kept_valid_query_only():
    user, post, viewer = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    query = fresh(
        f'query R($u: ID!) {{ user(id: $u) {{ id }} post(id: "{post}") {{ id }} '
        f'bad: user(id: "not-a-uuid") {{ id }} me {{ id }} }}'
    )
    assert root_reads(GRAPHQL, query, {"u": str(user)}, None, str(viewer)) == []  # not kept
    documents.admit(GRAPHQL, query)
    assert root_reads(GRAPHQL, query, {"u": str(user)}, None, str(viewer)) == [
        (USER_KIND, user),
        (POST_KIND, post),
        (USER_KIND, viewer),
    ]
    assert root_reads(GRAPHQL, query, {"u": "nope"}, None, None) == [(POST_KIND, post)]
    write = fresh(f'mutation {{ deletePost(id: "{post}") }}')
    documents.admit(GRAPHQL, write)
    assert root_reads(GRAPHQL, write, None, None, None) == []  # a mutation writes first
    invalid = fresh(f'{{ user(id: "{user}") {{ nosuchfield }} }}')
    documents.admit(GRAPHQL, invalid)
    assert root_reads(GRAPHQL, invalid, None, None, None) == []


def test_a_held_reply_is_taken_once(app):
    with app.test_request_context("/"):
        assert prefetch.take("k") is prefetch.NOT_HELD
        prefetch.hold({"k": b"entry"})
        assert prefetch.take("k") == b"entry"
        assert prefetch.take("k") is prefetch.NOT_HELD  # a second read asks the backend
    assert prefetch.take("k") is prefetch.NOT_HELD  # outside a request: nothing held


@needs_redis
def test_a_kept_querys_cache_reads_come_in_the_pipelines_round_trip(
    app, client, account, other, monkeypatch
):
    query = fresh("query U($id: ID!) { user(id: $id) { id username displayName } }")
    with app.app_context():
        backend = app_cache().backend
    sent: list[str] = []
    original = backend.get

    def counted(key: str) -> Any:  # observes, and reads Redis as before
        sent.append(key)
        return original(key)

    monkeypatch.setattr(backend, "get", counted)
    gql(client, query, {"id": account.id})  # admits the document (and fills the cache)
    gql(client, query, {"id": other.id})
    sent.clear()
    got = client.get(
        "/graphql", query_string={"query": query, "variables": json.dumps({"id": other.id})}
    )
    user = got.get_json()["data"]["user"]
    assert (user["id"], user["username"]) == (other.id, other.user["username"])
    assert sent == []  # the entry came with the rate limit's round trip
    gql(client, query, {"id": other.id})
    assert sent == []  # by POST too
    padded = query + " " * (40 * 1024)  # a large body is not parsed before the rate limit
    for _ in range(2):
        sent.clear()
        assert gql(client, padded, {"id": other.id}).get_json()["data"]["user"]["id"] == other.id
        assert len(sent) == 1
    # A write through REST, then the same query: the current state, never the one read before.
    changed = client.patch(
        f"/api/users/{other.id}", json={"display_name": "Renamed"}, headers=other.headers
    )
    assert changed.status_code == 200
    again = gql(client, query, {"id": other.id}).get_json()["data"]["user"]
    assert again["displayName"] == "Renamed"
