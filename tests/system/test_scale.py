"""Data at scale (issue 7): bulk seeding, the estimated `meta.total`, and proof that every query
behind the list and detail endpoints is an index scan on a realistically sized PostgreSQL table.

Latency at depth and seeding speed are measured, not tested: `python -m bench.scale`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from app import create_app
from app.extensions import db
from app.posts.slugs import make_slug
from tests.factories import PASSWORD, bearer, login, register
from tests.support.backends import DATABASE_URL, ON_POSTGRES, needs_postgres, test_config
from tests.support.scratch_db import scratch_database

LIMIT = "PAGINATION_EXACT_COUNT_LIMIT"
# One xdist worker runs this module: its module-scoped fixture is built once, not per worker.
pytestmark = pytest.mark.xdist_group("scale")


def seed(app: Flask, users: int, posts_per_user: int) -> str:
    result = app.test_cli_runner().invoke(
        args=[
            "seed",
            "--users",
            str(users),
            "--posts-per-user",
            str(posts_per_user),
            "--password",
            PASSWORD,
        ]
    )
    assert result.exit_code == 0, result.output
    return result.output


def sql(app: Flask, statement: str, **params: Any) -> list[Any]:
    with app.app_context():
        result = db.session.execute(sa.text(statement), params)
        rows = list(result) if result.returns_rows else []
        db.session.commit()
        db.session.remove()
        return rows


# Seeding ---------------------------------------------------------------------------------------


def test_seed_writes_slugs_time_ordered_ids_and_leaves_sequences_usable(app, client):
    output = seed(app, 3, 4)
    assert "seeded 3 users and 12 posts (+15 events)" in output
    posts = sql(app, "SELECT title, public_id, slug FROM posts ORDER BY id")
    assert len(posts) == 12
    for title, public_id, slug in posts:
        public_id = uuid.UUID(str(public_id))
        assert public_id.version == 7
        assert slug == make_slug(title, public_id)
    assert len({slug for *_, slug in posts}) == 12
    # PostgreSQL: the user ids were reserved from the sequence, so the API's next insert works.
    user = register(client)
    assert client.get(f"/api/users/{user['id']}").status_code == 200
    listing = client.get("/api/posts", query_string={"per_page": 100}).get_json()
    assert listing["meta"] == {"page": 1, "per_page": 100, "total": 12, "next_cursor": None}
    seeded = {str(uuid.UUID(str(public_id))) for _, public_id, _ in posts}
    assert {item["id"] for item in listing["data"]} == seeded
    assert {item["slug"] for item in listing["data"]} == {slug for *_, slug in posts}


# meta.total ------------------------------------------------------------------------------------


def test_sqlite_always_counts_exactly(app, client, monkeypatch):
    if ON_POSTGRES:
        pytest.skip("the estimate is PostgreSQL's; this checks the embedded default")
    monkeypatch.setitem(app.config, LIMIT, 5)
    seed(app, 2, 10)
    meta = client.get("/api/posts").get_json()["meta"]
    assert meta["total"] == 20
    assert "total_is_estimate" not in meta


@needs_postgres
def test_total_above_the_limit_is_the_planners_estimate(app, client, monkeypatch):
    seed(app, 4, 100)  # seed ANALYZEs what it wrote
    monkeypatch.setitem(app.config, LIMIT, 150)

    posts = client.get("/api/posts").get_json()["meta"]
    assert posts["total_is_estimate"] is True
    assert 360 <= posts["total"] <= 440, posts  # 400 rows, estimated within 10%

    # Below the limit the count is exact and carries no flag: users, and one author's posts.
    users = client.get("/api/users").get_json()["meta"]
    assert users["total"] == 4
    assert "total_is_estimate" not in users
    author = client.get("/api/users").get_json()["data"][0]["id"]
    by_author = client.get(f"/api/users/{author}/posts").get_json()["meta"]
    assert by_author["total"] == 100
    assert "total_is_estimate" not in by_author

    # A filtered list is estimated from its own filter, not from the whole table's size.
    monkeypatch.setitem(app.config, LIMIT, 50)
    by_author = client.get(f"/api/users/{author}/posts").get_json()["meta"]
    assert by_author["total_is_estimate"] is True
    assert 80 <= by_author["total"] <= 120, by_author

    # Cursor pages never count.
    cursor = client.get("/api/posts").get_json()["meta"]["next_cursor"]
    meta = client.get("/api/posts", query_string={"cursor": cursor}).get_json()["meta"]
    assert "total" not in meta
    assert "total_is_estimate" not in meta

    monkeypatch.setitem(app.config, LIMIT, 0)  # 0: always the exact count
    meta = client.get("/api/posts").get_json()["meta"]
    assert meta["total"] == 400
    assert "total_is_estimate" not in meta


@needs_postgres
def test_an_underestimating_planner_still_gets_a_flagged_lower_bound(app, client, monkeypatch):
    """Statistics say almost nothing is published (stale); the capped count finds out."""
    sql(app, "ALTER TABLE posts SET (autovacuum_enabled = off)")
    try:
        seed(app, 2, 100)
        sql(app, "UPDATE posts SET status = 'draft', published_at = NULL")
        sql(app, "ANALYZE posts")
        sql(app, "UPDATE posts SET status = 'published', published_at = created_at")
        monkeypatch.setitem(app.config, LIMIT, 150)
        meta = client.get("/api/posts").get_json()["meta"]
        # The planner guessed ~1 row; the count stopped at limit + 1 = "more than 150".
        assert meta["total_is_estimate"] is True
        assert meta["total"] == 151
        monkeypatch.setitem(app.config, LIMIT, 300)
        meta = client.get("/api/posts").get_json()["meta"]
        assert meta["total"] == 200
        assert "total_is_estimate" not in meta
    finally:
        sql(app, "ALTER TABLE posts RESET (autovacuum_enabled)")


# Index scans -----------------------------------------------------------------------------------

SCALE_USERS = 20_000
SCALE_POSTS_PER_USER = 10  # 200,000 posts: enough for the planner to choose as it would live


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A database of its own with 20k users and 200k posts (10% drafts, 2% deleted), vacuumed
    and analysed; an app on it with the read cache off, so every read reaches the database."""
    if not ON_POSTGRES:
        pytest.skip("needs PostgreSQL: set DATABASE_URL=postgresql+psycopg://...")
    from flask_migrate import upgrade

    with scratch_database(DATABASE_URL, tmp_path_factory.mktemp("scale"), "scale") as uri:
        application = create_app(test_config(uri, CACHE_ENABLED=False))
        with application.app_context():
            upgrade()
        seed(application, SCALE_USERS, SCALE_POSTS_PER_USER)
        sql(application, "UPDATE posts SET status = 'draft', published_at = NULL WHERE id % 10 = 3")
        sql(application, "UPDATE posts SET deleted_at = now() WHERE id % 50 = 7")
        sql(application, "UPDATE users SET deleted_at = now() WHERE id % 100 = 7")
        with application.app_context():
            with db.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                    "VACUUM ANALYZE users, posts"
                )
            db.engine.dispose()
        (author_id, email), *_ = sql(
            application,
            "SELECT u.public_id, u.email FROM users u JOIN posts p ON p.author_id = u.id "
            "WHERE u.deleted_at IS NULL AND p.status = 'draft' LIMIT 1",
        )
        ((post_id, slug),) = sql(
            application,
            "SELECT public_id, slug FROM posts WHERE status = 'published' "
            "AND deleted_at IS NULL ORDER BY id LIMIT 1 OFFSET 123456",
        )
        client = application.test_client()
        token = login(client, email)["access_token"]
        yield {
            "app": application,
            "author": str(author_id),
            "post": str(post_id),
            "slug": slug,
            "headers": bearer(token),
        }
        with application.app_context():
            db.engine.dispose()


def _walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _walk(child)


def explain_requests(big: dict[str, Any], path: str, *, as_author: bool) -> list[dict[str, Any]]:
    """Call `path` through the test client, capture every statement it sends, and EXPLAIN each
    one with its own parameters. Returns [{"sql", "scans": [(node type, table, index)]}]."""
    app: Flask = big["app"]
    captured: list[tuple[str, Any]] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        # The planner-estimate probe of meta.total is itself an EXPLAIN: it reads no rows.
        if not context.execution_options.get("postboard_explain_json"):
            captured.append((statement, parameters))

    client = app.test_client()
    with app.app_context():
        sa.event.listen(db.engine, "before_cursor_execute", record)
        try:
            response = client.get(path, headers=big["headers"] if as_author else {})
        finally:
            sa.event.remove(db.engine, "before_cursor_execute", record)
        assert response.status_code == 200, (path, response.get_json())
        plans = []
        with db.engine.connect() as conn:
            for statement, parameters in captured:
                if not statement.lstrip().upper().startswith("SELECT"):
                    continue
                plan = conn.exec_driver_sql(
                    "EXPLAIN (FORMAT JSON) " + statement, parameters
                ).scalar_one()
                scans = [
                    (node["Node Type"], node["Relation Name"], node.get("Index Name"))
                    for node in _walk(plan[0]["Plan"])
                    if "Relation Name" in node
                ]
                plans.append({"sql": " ".join(statement.split()), "scans": scans})
    return plans


INDEXED_ACCESS = ("Index Scan", "Index Only Scan", "Bitmap Heap Scan")
REQUESTS = {
    "users offset p1": ("/api/users", False),
    "users offset p900": ("/api/users?page=900", False),
    "users cursor deep": ("/api/users?cursor={users_cursor}", False),
    "user": ("/api/users/{author}", False),
    "user posts offset": ("/api/users/{author}/posts", False),
    "user posts with drafts, offset": ("/api/users/{author}/posts", True),
    "user posts with drafts, cursor": ("/api/users/{author}/posts?per_page=2&cursor={own}", True),
    "posts offset p1": ("/api/posts", False),
    "posts offset p1 as a user": ("/api/posts", True),
    "posts offset p5000": ("/api/posts?page=5000", False),
    "posts cursor deep": ("/api/posts?cursor={posts_cursor}", False),
    "post": ("/api/posts/{post}", False),
    "post as its reader": ("/api/posts/{post}", True),
    "post by slug": ("/api/posts/by-slug/{slug}", False),
}


@needs_postgres
@pytest.mark.parametrize("limit", [100_000, 0], ids=["estimated-total", "exact-total"])
@pytest.mark.parametrize("case", list(REQUESTS))
def test_every_list_and_detail_query_is_an_index_scan(big, case, limit):
    app: Flask = big["app"]
    app.config[LIMIT] = limit
    client = app.test_client()
    names = {
        **big,
        "users_cursor": client.get("/api/users?page=900").get_json()["meta"]["next_cursor"],
        "posts_cursor": client.get("/api/posts?page=5000").get_json()["meta"]["next_cursor"],
        "own": client.get(
            f"/api/users/{big['author']}/posts?per_page=2", headers=big["headers"]
        ).get_json()["meta"]["next_cursor"],
    }
    path, as_author = REQUESTS[case]
    plans = explain_requests(big, path.format(**names), as_author=as_author)

    on_entities = [p for p in plans if any(t in ("users", "posts") for _, t, _ in p["scans"])]
    assert on_entities, f"{case}: no query on users or posts was seen: the check would be vacuous"
    for plan in on_entities:
        for node, table, index in plan["scans"]:
            if table in ("users", "posts"):
                assert node in INDEXED_ACCESS, f"{case}: {node} on {table} ({index})\n{plan['sql']}"
