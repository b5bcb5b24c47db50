"""Post slugs: how they are made, GET /api/posts/by-slug/{slug}, and the expand window (posts
from before slugs existed, with a NULL slug, until the backfill reaches them)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.posts.slugs import (
    SLUG_MAX,
    SLUG_MIN,
    SLUG_REGEX,
    SLUG_WORDS_MAX,
    is_well_formed,
    make_slug,
    slug_suffix,
)
from tests.support.assertions import assert_error

SUFFIX = re.compile(r"-[a-z2-7]{26}$")


def words_of(slug: str) -> str:
    return SUFFIX.sub("", slug)


# make_slug -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "words"),
    [
        ("Hello, World!", "hello-world"),
        ("  Many   spaces\tand\nlines  ", "many-spaces-and-lines"),
        ("Ünïcödé Straße", "unicode-strasse"),
        ("Привет мир", "privet-mir"),
        ("日本語", "ri-ben-yu"),
        ("🎉🎉🎉", "post"),
        ("---", "post"),
        ("C'est déjà l'été", "c-est-deja-l-ete"),
    ],
)
def test_slug_words_are_lowercase_ascii_from_the_title(title: str, words: str) -> None:
    public_id = uuid.uuid4()
    slug = make_slug(title, public_id)
    assert words_of(slug) == words
    assert slug.endswith("-" + slug_suffix(public_id))
    assert is_well_formed(slug)


def test_long_titles_are_cut_at_a_word_boundary() -> None:
    slug = make_slug("word " * 50, uuid.uuid4())
    assert words_of(slug) == "-".join(["word"] * 12)  # 59 characters: a 13th word would not fit
    one_long_word = make_slug("x" * 200, uuid.uuid4())
    assert words_of(one_long_word) == "x" * SLUG_WORDS_MAX
    assert len(one_long_word) == SLUG_MAX


def test_same_title_never_collides_and_the_suffix_is_the_whole_id() -> None:
    ids = [uuid.uuid4() for _ in range(200)]
    slugs = {make_slug("Same title", i) for i in ids}
    assert len(slugs) == len(ids)
    # Two ids that share their first 15 bytes still get different slugs (no truncated hash).
    base = uuid.uuid4().bytes[:15]
    a, b = uuid.UUID(bytes=base + b"\x00"), uuid.UUID(bytes=base + b"\x01")
    assert make_slug("t", a) != make_slug("t", b)
    assert make_slug("Same title", ids[0]) == make_slug("Same title", str(ids[0]))  # deterministic


@settings(max_examples=300, deadline=None)
@given(title=st.text(min_size=1, max_size=200), public_id=st.uuids())
def test_any_title_gives_a_well_formed_bounded_slug(title: str, public_id: uuid.UUID) -> None:
    slug = make_slug(title, public_id)
    assert SLUG_MIN <= len(slug) <= SLUG_MAX
    assert re.fullmatch(SLUG_REGEX, slug), slug
    assert is_well_formed(slug)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "hello",
        "Hello-world-" + "a" * 26,  # upper case
        "hello-world-" + "a" * 25,  # suffix too short
        "hello-world-" + "a" * 25 + "1",  # 1 is not base32
        "hello--world-" + "a" * 26,
        "-hello-" + "a" * 26,
        "a" * 61 + "-" + "a" * 26,  # words part over 60
        "héllo-" + "a" * 26,
    ],
)
def test_malformed_slugs_are_refused(bad: str) -> None:
    assert not is_well_formed(bad)


# GET /api/posts/by-slug/{slug} -----------------------------------------------------------------


def by_slug(client: Any, slug: str, headers: dict[str, str] | None = None) -> Any:
    return client.get(f"/api/posts/by-slug/{slug}", headers=headers or {})


def test_create_returns_the_slug_and_by_slug_serves_the_same_answer(client, account) -> None:
    post = account.post_as("Hello, Wörld!", status="published")
    assert post["slug"] == make_slug("Hello, Wörld!", uuid.UUID(post["id"]))
    assert post["slug"].startswith("hello-world-")

    by_id = client.get(f"/api/posts/{post['id']}")
    found = by_slug(client, post["slug"])
    assert found.status_code == 200, found.json
    assert found.get_data() == by_id.get_data()
    for header in ("ETag", "Cache-Control", "Vary"):
        assert found.headers[header] == by_id.headers[header]
    assert found.headers["ETag"] == '"v1"'

    not_modified = by_slug(client, post["slug"], {"If-None-Match": found.headers["ETag"]})
    assert not_modified.status_code == 304
    assert not_modified.headers["ETag"] == '"v1"'
    assert by_slug(client, post["slug"], {"If-None-Match": '"v0"'}).status_code == 200


def test_two_posts_with_the_same_title_have_their_own_slugs(client, account) -> None:
    first = account.post_as("Twins", status="published")
    second = account.post_as("Twins", status="published")
    assert first["slug"] != second["slug"]
    assert words_of(first["slug"]) == words_of(second["slug"]) == "twins"
    assert by_slug(client, first["slug"]).json["data"]["id"] == first["id"]
    assert by_slug(client, second["slug"]).json["data"]["id"] == second["id"]


def test_the_slug_is_a_stable_permalink_across_title_edits(client, account) -> None:
    post = account.post_as("Original title", status="published")
    path = f"/api/posts/{post['id']}"
    assert by_slug(client, post["slug"]).status_code == 200  # cached now
    edited = client.patch(path, json={"title": "A new title"}, headers=account.headers)
    assert edited.status_code == 200
    assert edited.json["data"]["slug"] == post["slug"]
    put = client.put(
        path, json={"title": "Third", "body": "b", "status": "published"}, headers=account.headers
    )
    assert put.json["data"]["slug"] == post["slug"]
    found = by_slug(client, post["slug"])
    assert found.json["data"]["title"] == "Third"  # a read after a write never sees the old state
    assert found.headers["ETag"] == '"v3"'


def test_drafts_by_slug_only_for_their_author_and_admins(client, account, make_account) -> None:
    draft = account.post_as("Secret draft")
    assert draft["status"] == "draft"
    stranger = make_account()
    admin = make_account(admin=True)
    assert_error(by_slug(client, draft["slug"]), 404, "NOT_FOUND")
    assert_error(by_slug(client, draft["slug"], stranger.headers), 404, "NOT_FOUND")
    assert by_slug(client, draft["slug"], account.headers).status_code == 200
    assert by_slug(client, draft["slug"], admin.headers).status_code == 200


def test_deleted_posts_are_gone_by_slug_too(client, account) -> None:
    post = account.post_as("Short-lived", status="published")
    assert by_slug(client, post["slug"]).status_code == 200  # and cached
    assert client.delete(f"/api/posts/{post['id']}", headers=account.headers).status_code == 204
    assert_error(by_slug(client, post["slug"]), 404, "NOT_FOUND")
    assert_error(by_slug(client, post["slug"], account.headers), 404, "NOT_FOUND")


def test_posts_of_a_deleted_user_are_gone_by_slug(client, account) -> None:
    post = account.post_as("Orphan", status="published")
    assert client.delete(f"/api/users/{account.id}", headers=account.headers).status_code == 204
    assert_error(by_slug(client, post["slug"]), 404, "NOT_FOUND")


@pytest.mark.parametrize(
    "slug",
    [
        "HELLO-" + "a" * 26,
        "hello-" + "a" * 25,
        "hello-" + "a" * 27 + "1",
        "a" * 61 + "-" + "a" * 26,
        "hello%20world-" + "a" * 26,
        "..",
        "hello-" + "a" * 26 + "/extra",
        "' OR 1=1 --",
    ],
)
def test_malformed_or_unknown_slugs_are_404(client, slug: str) -> None:
    assert_error(by_slug(client, slug), 404, "NOT_FOUND")


def test_a_well_formed_unknown_slug_is_404(client, account) -> None:
    account.post_as("Exists", status="published")
    assert_error(by_slug(client, make_slug("Exists", uuid.uuid4())), 404, "NOT_FOUND")


def test_openapi_documents_the_route_with_the_enforced_pattern(client) -> None:
    spec = client.get("/api/openapi.json").json
    item = spec["paths"]["/api/posts/by-slug/{slug}"]
    (param,) = [p for p in item["parameters"] if p["in"] == "path"]
    assert param["schema"] == {
        "type": "string",
        "pattern": f"^{SLUG_REGEX}$",
        "minLength": SLUG_MIN,
        "maxLength": SLUG_MAX,
    }
    operation = item["get"]
    assert operation["operationId"] == "getPostBySlug"
    assert {"304", "401", "404", "429"} <= set(operation["responses"])
    slug = spec["components"]["schemas"]["Post"]["properties"]["slug"]
    assert slug["pattern"] == param["schema"]["pattern"]
    assert slug["maxLength"] == SLUG_MAX
    create_links = spec["paths"]["/api/users/{user_id}/posts"]["post"]["responses"]["201"]["links"]
    assert create_links["GetPostBySlug"]["operationId"] == "getPostBySlug"
