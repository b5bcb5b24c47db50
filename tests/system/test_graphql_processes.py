"""GraphQL against a real gunicorn (2 workers): a write through one door is read through the
other at once, from whichever process answers; and a typed client generated from the SDL kept
in the repository (sgqlc-codegen) drives a scenario end to end."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

from graphql import build_schema, introspection_from_schema

from app.graphql.schema import SDL_PATH
from tests.factories import PASSWORD

CODEGEN = Path(sys.executable).parent / "sgqlc-codegen"


def graphql(http, query: str, variables: dict | None = None, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return http.call("POST", "/graphql", {"query": query, "variables": variables or {}}, headers)


def signed_up(http) -> tuple[str, str]:
    name = f"g{uuid.uuid4().hex[:10]}"
    body = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
    status, _, user = http.call("POST", "/api/users", body)
    assert status == 201, user
    status, _, tokens = http.call(
        "POST", "/api/auth/login", {"email": body["email"], "password": PASSWORD}
    )
    assert status == 200, tokens
    return user["data"]["id"], tokens["data"]["access_token"]


def test_a_write_through_one_door_is_read_through_the_other_at_once(server) -> None:
    http, _ = server
    user_id, token = signed_up(http)
    auth = {"Authorization": f"Bearer {token}"}
    for round_ in range(6):  # several requests: both workers answer some
        status, _, body = graphql(
            http,
            "mutation C($u: ID!, $t: String!) { createPost(userId: $u, "
            "input: {title: $t, status: published}) { id version } }",
            {"u": user_id, "t": f"by graphql {round_}"},
            token,
        )
        assert status == 200, body
        post = body["data"]["createPost"]
        status, _, rest = http.call("GET", f"/api/posts/{post['id']}", headers=auth)
        assert (status, rest["data"]["title"]) == (200, f"by graphql {round_}")
        status, _, _ = http.call(
            "PATCH", f"/api/posts/{post['id']}", {"title": f"by rest {round_}"}, auth
        )
        assert status == 200
        _, _, seen = graphql(
            http, "query P($id: ID!) { post(id: $id) { title version } }", {"id": post["id"]}
        )
        assert seen["data"]["post"] == {"title": f"by rest {round_}", "version": 2}
        _, _, changed = graphql(
            http,
            'mutation U($id: ID!) { updatePost(id: $id, input: {title: "again"}, '
            "expectedVersion: 2) { version } }",
            {"id": post["id"]},
            token,
        )
        assert changed["data"]["updatePost"] == {"version": 3}
        status, _, rest = http.call("GET", f"/api/posts/{post['id']}")
        assert (rest["data"]["title"], rest["data"]["version"]) == ("again", 3)


def generate_client(workdir: Path):
    """sgqlc-codegen's typed schema module, from docs/schema.graphql (the kept artifact)."""
    introspection = introspection_from_schema(build_schema(SDL_PATH.read_text()))
    (workdir / "schema.json").write_text(json.dumps({"data": introspection}))
    done = subprocess.run(
        [str(CODEGEN), "schema", "schema.json", "postboard_graphql.py"],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(workdir))
    sys.modules.pop("postboard_graphql", None)
    return importlib.import_module("postboard_graphql")


def test_a_client_generated_from_the_sdl_runs_a_scenario(server, tmp_path: Path) -> None:
    from sgqlc.endpoint.http import HTTPEndpoint
    from sgqlc.operation import Operation

    http, _ = server
    try:
        generated = generate_client(tmp_path)
        anonymous = HTTPEndpoint(f"{http.base}/graphql")

        name = f"c{uuid.uuid4().hex[:10]}"
        signup = Operation(generated.Mutation)
        made = signup.create_user(
            input={"email": f"{name}@example.com", "username": name, "password": PASSWORD}
        )
        made.__fields__("id", "username", "email")
        user = (signup + anonymous(signup)).create_user
        assert (user.username, user.email) == (name, f"{name}@example.com")

        _, _, tokens = http.call(
            "POST", "/api/auth/login", {"email": f"{name}@example.com", "password": PASSWORD}
        )
        signed = HTTPEndpoint(
            f"{http.base}/graphql",
            {"Authorization": f"Bearer {tokens['data']['access_token']}"},
        )
        ids = []
        for i in range(3):
            write = Operation(generated.Mutation)
            write.create_post(
                user_id=user.id, input={"title": f"Post {i}", "status": "published"}
            ).__fields__("id", "version")
            ids.append((write + signed(write)).create_post.id)

        seen, after = [], None
        while True:
            read = Operation(generated.Query)
            page = read.user(id=user.id).posts(first=2, after=after)
            page.edges.node.__fields__("id", "title")
            page.page_info.__fields__("has_next_page", "end_cursor")
            result = (read + signed(read)).user.posts
            seen += [edge.node.id for edge in result.edges]
            if not result.page_info.has_next_page:
                break
            after = result.page_info.end_cursor
        assert seen == ids[::-1]

        stale = Operation(generated.Mutation)
        stale.update_post(id=ids[0], input={"title": "x"}, expected_version=7).__fields__("id")
        answer = signed(stale)
        assert answer["errors"][0]["extensions"]["code"] == "PRECONDITION_FAILED"

        me = Operation(generated.Query)
        me.me().__fields__("id", "email")
        assert (me + signed(me)).me.id == user.id
        delete = Operation(generated.Mutation)
        delete.delete_post(id=ids[0], expected_version=1)
        assert (delete + signed(delete)).delete_post is True
    finally:
        if str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))
