"""/graphql (contract §8): reads and writes through the same services as REST, connections on
REST's cursors, visibility, request errors as 400, GET for queries only, the bounds refused
before any SQL, no N+1, the operation on the access line and in the metrics, the SDL artifact."""

from __future__ import annotations

import json
import uuid

import pytest

from app import create_app
from app.core.security import Principal
from app.extensions import db
from app.graphql.schema import SDL_PATH, sdl
from app.posts.service import PostService
from app.users.service import UserService
from tests.factories import PASSWORD, unique
from tests.support.backends import test_config
from tests.support.graphql import codes, counting_statements, gql, only_error
from tests.support.metrics import scrape, value

USER_FIELDS = "id username displayName bio email createdAt updatedAt version"
POST_FIELDS = "id authorId title slug body status publishedAt createdAt updatedAt version"


def seed(app, users: int, posts_each: int) -> list[str]:
    """Users with published posts, written through the services (fast, no HTTP)."""
    ids = []
    with app.app_context():
        people, writer = UserService.from_app(), PostService.from_app()
        for _ in range(users):
            name = unique()
            user = people.register(
                {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
            )
            actor = Principal(user_id=user.id, public_id=user.public_id)
            for i in range(posts_each):
                writer.create(
                    user.public_id, {"title": f"P{i}", "status": "published"}, actor=actor
                )
            ids.append(str(user.public_id))
        db.session.remove()
    return ids


def test_user_and_post_show_what_rest_shows(client, account):
    post = account.post_as("Hello", body="b", status="published")
    got = gql(
        client,
        f"query One($u: ID!, $p: ID!) {{ user(id: $u) {{ {USER_FIELDS} }} "
        f"post(id: $p) {{ {POST_FIELDS} author {{ id }} }} }}",
        {"u": account.id, "p": post["id"]},
    )
    assert got.status_code == 200, got.get_json()
    data = got.get_json()["data"]
    rest_user = client.get(f"/api/users/{account.id}").get_json()["data"]
    assert data["user"]["username"] == rest_user["username"]
    assert data["user"]["displayName"] == rest_user["display_name"]
    assert data["user"]["createdAt"] == rest_user["created_at"]
    assert data["user"]["version"] == rest_user["version"]
    assert data["user"]["email"] is None  # anonymous: as REST leaves it out
    assert data["post"]["publishedAt"] == post["published_at"]
    assert data["post"]["slug"] == post["slug"]
    assert data["post"]["author"]["id"] == account.id


def test_users_connection_continues_on_rest_cursors_and_back(client, app):
    ids = seed(app, 5, 0)
    query = "query P($a: String) { users(first: 2, after: $a) { edges { node { id } cursor } "
    query += "pageInfo { hasNextPage endCursor } } }"
    first = gql(client, query, {"a": None}).get_json()["data"]["users"]
    assert [e["node"]["id"] for e in first["edges"]] == ids[::-1][:2]
    assert first["pageInfo"]["hasNextPage"] is True
    # Cursors are encrypted anew each time: the last edge's and endCursor name one position.
    after_edge = gql(client, query, {"a": first["edges"][-1]["cursor"]}).get_json()["data"]
    assert after_edge["users"]["edges"][0]["node"]["id"] == ids[::-1][2]
    # A GraphQL cursor continues a REST list, and REST's next_cursor a GraphQL connection.
    rest = client.get(f"/api/users?per_page=2&cursor={first['pageInfo']['endCursor']}").get_json()
    assert [u["id"] for u in rest["data"]] == ids[::-1][2:4]
    last = gql(client, query, {"a": rest["meta"]["next_cursor"]}).get_json()["data"]["users"]
    assert [e["node"]["id"] for e in last["edges"]] == ids[::-1][4:]
    assert last["pageInfo"]["hasNextPage"] is False


def test_first_and_after_are_validated_like_per_page_and_cursor(client):
    error = only_error(
        gql(client, "{ users(first: 101) { edges { cursor } } }"), 200, "VALIDATION_ERROR"
    )
    assert error["extensions"]["details"][0]["field"] == "first"
    error = only_error(
        gql(client, '{ posts(after: "forged") { edges { cursor } } }'), 200, "VALIDATION_ERROR"
    )
    assert error["extensions"]["details"] == [
        {"field": "after", "message": "Invalid or tampered cursor."}
    ]


def test_drafts_and_email_follow_the_rest_visibility(client, account, other, admin):
    account.post_as("Public", status="published")
    account.post_as("Secret")  # a draft
    query = f'{{ user(id: "{account.id}") {{ email posts {{ edges {{ node {{ title }} }} }} }} }}'
    seen = {}
    for who, headers in (
        ("anon", {}),
        ("other", other.headers),
        ("self", account.headers),
        ("admin", admin.headers),
    ):
        user = gql(client, query, headers=headers).get_json()["data"]["user"]
        seen[who] = (user["email"], [e["node"]["title"] for e in user["posts"]["edges"]])
    assert seen["anon"] == seen["other"] == (None, ["Public"])
    assert seen["self"] == seen["admin"] == (account.email, ["Secret", "Public"])


def test_me_needs_a_token_and_a_bad_token_is_401_for_the_whole_request(client, account):
    assert gql(client, "{ me { id email } }", headers=account.headers).get_json()["data"] == {
        "me": {"id": account.id, "email": account.email}
    }
    only_error(gql(client, "{ me { id } }"), 200, "UNAUTHENTICATED")
    refused = gql(
        client, "{ posts { edges { cursor } } }", headers={"Authorization": "Bearer x.y.z"}
    )
    only_error(refused, 401, "UNAUTHENTICATED")
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")


def test_mutations_write_through_the_services(client, account):
    created = gql(
        client,
        'mutation C($u: ID!) { createPost(userId: $u, input: {title: "T", status: published}) '
        "{ id version status } }",
        {"u": account.id},
        headers=account.headers,
    ).get_json()["data"]["createPost"]
    assert created["version"] == 1
    assert created["status"] == "published"
    assert client.get(f"/api/posts/{created['id']}").get_json()["data"]["title"] == "T"
    changed = gql(
        client,
        'mutation U($id: ID!, $e: String) { updatePost(id: $id, input: {title: "U"}, '
        "ifMatch: $e) { title version } }",
        {"id": created["id"], "e": '"v1"'},
        headers=account.headers,
    ).get_json()["data"]["updatePost"]
    assert changed == {"title": "U", "version": 2}
    user = gql(
        client,
        f'mutation {{ updateUser(id: "{account.id}", input: {{displayName: "New"}}, '
        "expectedVersion: 1) { displayName version email } }",
        headers=account.headers,
    ).get_json()["data"]["updateUser"]
    assert user == {"displayName": "New", "version": 2, "email": account.email}
    gone = gql(
        client,
        'mutation {{ deletePost(id: "{}", expectedVersion: 2) }}'.format(created["id"]),
        headers=account.headers,
    )
    assert gone.get_json() == {"data": {"deletePost": True}}
    assert client.get(f"/api/posts/{created['id']}").status_code == 404
    name = unique()
    made = gql(
        client,
        "mutation N($i: CreateUserInput!) { createUser(input: $i) { username email } }",
        {"i": {"email": f"{name}@Example.com", "username": name, "password": PASSWORD}},
    ).get_json()["data"]["createUser"]
    assert made == {"username": name, "email": f"{name}@example.com"}  # normalised as REST does


def test_validation_details_name_graphql_fields(client, account):
    error = only_error(
        gql(
            client,
            'mutation {{ updateUser(id: "{}", input: {{displayName: "{}", username: "no spaces"}}) '
            "{{ id }} }}".format(account.id, "x" * 101),
            headers=account.headers,
        ),
        200,
        "VALIDATION_ERROR",
    )
    fields = {d["field"] for d in error["extensions"]["details"]}
    assert fields == {"displayName", "username"}


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (lambda c: c.post("/graphql", json={"query": "{ users { "}), 400),  # syntax
        (lambda c: c.post("/graphql", json={"query": "{ nope }"}), 400),  # validation
        (lambda c: c.post("/graphql", json={}), 400),  # no query
        (lambda c: c.post("/graphql", json=[{"query": "{ me { id } }"}]), 400),  # a batch
        (lambda c: c.post("/graphql", data="{nope", content_type="application/json"), 400),
        (lambda c: c.post("/graphql", json={"query": "{ me { id } }", "variables": [1]}), 400),
        (
            lambda c: c.post(
                "/graphql",
                json={
                    "query": "query Q($n: Int!) { users(first: $n) { edges { cursor } } }",
                    "variables": {"n": "x"},
                },
            ),
            400,
        ),
        (lambda c: c.get("/graphql?query=%7B+me+%7B"), 400),
        (
            lambda c: c.post(
                "/graphql", json={"query": "query A { me { id } } query B { me { id } }"}
            ),
            400,
        ),
    ],
)
def test_malformed_requests_are_400_with_a_code_and_no_data(client, make, status):
    response = make(client)
    assert response.status_code == status, response.get_json()
    assert "data" not in response.get_json()
    assert codes(response) == ["VALIDATION_ERROR"]
    assert response.get_json()["error"]["code"] == "VALIDATION_ERROR"  # the contract's envelope


def test_get_runs_queries_and_refuses_mutations_with_405(client, account):
    got = client.get(
        "/graphql",
        query_string={
            "query": "query Q($id: ID!) { user(id: $id) { id } }",
            "variables": json.dumps({"id": account.id}),
        },
    )
    assert got.get_json() == {"data": {"user": {"id": account.id}}}
    refused = client.get(
        "/graphql",
        query_string={"query": 'mutation { deletePost(id: "x") }'},
        headers=account.headers,
    )
    only_error(refused, 405, "METHOD_NOT_ALLOWED")
    assert refused.headers["Allow"] == "POST"


DEEP = (
    "{ users { edges { node { posts { edges { node { author { posts { edges { node "
    "{ author { id } } } } } } } } } } } }"
)
ALIASES = "{ " + " ".join(f"a{i}: me {{ id }}" for i in range(16)) + " }"
TOKENS = "{ " + " ".join("__typename" for _ in range(2100)) + " }"
COSTLY = "{ users(first: 100) { edges { node { posts(first: 100) { edges { node { id } } } } } } }"


@pytest.mark.parametrize(
    ("query", "words"),
    [(DEEP, "depth"), (ALIASES, "aliases"), (TOKENS, "token"), (COSTLY, "costs")],
)
def test_bounded_queries_are_refused_before_any_sql(app, client, account, query, words):
    seed(app, 2, 1)
    with counting_statements(app) as statements:
        response = gql(client, query)
    only_error(response, 400, "VALIDATION_ERROR")
    assert words in response.get_json()["errors"][0]["message"].lower()
    assert len(statements) == 0, statements.sent


def test_a_modest_query_passes_every_bound(client):
    fine = (
        "{ users(first: 20) { edges { node { posts(first: 5) { edges { node { title "
        "author { id } } } } } } } }"
    )
    assert gql(client, fine).status_code == 200


PAGE = """{ users(first: %d) { edges { node { id username posts(first: 5) {
  edges { node { id title author { id username } } } pageInfo { hasNextPage } } } } } }"""


def test_no_n_plus_one_a_page_of_users_with_posts_costs_constant_sql(app, client, admin):
    seed(app, 2, 5)
    with counting_statements(app) as small:
        got = gql(client, PAGE % 3)  # two seeded users and the admin
    assert got.status_code == 200
    assert "errors" not in got.get_json()
    seed(app, 18, 5)
    with counting_statements(app) as large:
        got = gql(client, PAGE % 21)
    users = got.get_json()["data"]["users"]["edges"]
    assert len(users) == 21
    assert sum(len(u["node"]["posts"]["edges"]) for u in users) == 100
    assert len(small) == len(large) <= 3, large.sent  # users, their posts, the posts' authors
    # Authenticated too (the admin sees every draft): still constant.
    with counting_statements(app) as authed:
        assert gql(client, PAGE % 21, headers=admin.headers).status_code == 200
    assert len(authed) <= len(large) + 2, authed.sent  # + the token's user, when not cached


def test_operation_name_on_the_access_line_and_in_the_metrics(json_logs, client, account):
    gql(client, "query FindMe { me { id } }", headers=account.headers)
    gql(client, f'mutation {{ deletePost(id: "{uuid.uuid4()}") }}', headers=account.headers)
    lines = [json.loads(line) for line in json_logs().splitlines() if '"app.access"' in line]
    graphql = [line for line in lines if line["path"] == "/graphql"]
    assert [(line["operation"], line["operation_type"]) for line in graphql] == [
        ("FindMe", "query"),
        ("<anonymous>", "mutation"),
    ]
    samples = scrape(client)
    assert value(samples, "postboard_operations_total", operation="FindMe", type="query") == 1
    assert value(samples, "postboard_operation_duration_seconds_count", operation="FindMe") == 1


def test_schema_file_is_the_codes_schema_and_is_served(client):
    assert SDL_PATH.read_text() == sdl(), "docs/schema.graphql drifted: run make graphql-schema"
    served = client.get("/graphql/schema.graphql")
    assert served.status_code == 200
    assert served.mimetype == "text/plain"
    assert served.get_data(as_text=True) == sdl()


def test_introspection_works_and_graphiql_is_only_outside_production(app, client):
    from graphql import get_introspection_query

    assert "__schema" in gql(client, get_introspection_query()).get_json()["data"]
    page = client.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert "unpkg.com" in page.headers["Content-Security-Policy"]
    production = create_app(
        test_config(
            app.config["SQLALCHEMY_DATABASE_URI"],
            APP_ENV="production",
            SECRET_KEY="s" * 40,
            JWT_SECRET_KEY="j" * 40,
        )
    )
    refused = production.test_client().get("/graphql", headers={"Accept": "text/html"})
    assert refused.status_code == 400
    assert refused.mimetype == "application/json"
