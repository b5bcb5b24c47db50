"""A stateful property test of history (hypothesis RuleBasedStateMachine).

Random sequences of API writes go through the Flask test client: users and posts created, PUT,
PATCH, password changes, status flips, deletes, a user's delete cascading to their posts, by
their owner or an admin; and writes that must fail (400, 409, 412, a crash injected in the
middle of the transaction). After every step:

- every aggregate's events, folded from version 1, give its current row's representation (and
  the snapshots written so far equal that fold at their versions);
- every write that failed left no event (the event count did not move);
- for the aggregates this step wrote, `as_of` at every recorded instant (each write's own
  `updated_at`, and a deletion's time) answers exactly the body the API returned then, halfway
  to the next instant too, 404 just before the creation and from a deletion on.

The teardown checks `as_of` for every aggregate of the run. A snapshot every 3 events makes the
replays start from snapshots. Settings are modest and derandomised: it runs in `make test-fast`.
"""

from __future__ import annotations

import string
from datetime import datetime
from typing import Any
from unittest import mock

import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from app.core.events import Event
from app.extensions import db
from app.posts.repository import PostRepository
from tests import factories
from tests.factories import PASSWORD, Account, unique
from tests.support.history import (
    as_of,
    events_of,
    everything,
    fold_states,
    midpoint,
    replayed,
    shift,
)

SETTINGS = settings(
    derandomize=True,
    max_examples=6,
    stateful_step_count=12,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
WORDS = st.text(string.ascii_letters + " ", min_size=1, max_size=12).filter(str.strip)
MAX_USERS, MAX_POSTS = 4, 6  # few aggregates, many writes each: histories past a snapshot
WEIGHTS = {"write_user": 2, "write_post": 2}
FAILURES = ["invalid", "stale", "crash", "conflict", "crash_cascade"]
Timeline = list[tuple[str, dict[str, Any] | None]]  # (instant, body then; None: deleted)


def _later(a: str, b: str) -> bool:
    return datetime.fromisoformat(a) > datetime.fromisoformat(b)


def test_history_replays_every_write_and_answers_every_instant(make_app) -> None:
    app = make_app(EVENTS_SNAPSHOT_EVERY=3)
    client = app.test_client()
    admin = factories.make_account(client, app, admin=True)

    def event_count() -> int:
        with app.app_context():
            count = db.session.scalar(sa.select(sa.func.count()).select_from(Event))
            db.session.remove()
            return int(count or 0)

    class History(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.timelines: dict[str, Timeline] = {}
            self.kinds: dict[str, str] = {}
            self.accounts: dict[str, Account] = {}  # live users, by id
            self.posts: dict[str, str] = {}  # live post id -> author id
            self.touched: set[str] = set()

        # --- helpers -------------------------------------------------------------------------

        def record(self, kind: str, body: dict[str, Any]) -> None:
            timeline = self.timelines.setdefault(body["id"], [])
            last = timeline[-1][1] if timeline else None
            if last is not None and body["version"] == last["version"]:
                return  # a write that changed nothing: no event, no new instant
            self.kinds[body["id"]] = kind
            timeline.append((body["updated_at"], body))
            self.touched.add(body["id"])

        def record_deleted(self, public_id: str) -> None:
            """A delete answers 204: its instant is its event's (the write's own time)."""
            last = events_of(app, public_id)[-1]
            assert last.event_type.endswith(".deleted")
            self.timelines[public_id].append((last.occurred_at.isoformat(), None))
            self.touched.add(public_id)

        def actor(self, data: st.DataObject, owner: str) -> Account:
            return data.draw(st.sampled_from([self.accounts[owner], admin]), label="actor")

        def path(self, public_id: str) -> str:
            return f"/api/{self.kinds[public_id]}s/{public_id}"

        # --- the step: one action, drawn evenly among those that apply -------------------------

        @initialize()
        def two_authors(self) -> None:
            """Start with two users and a post each: the steps go to writes, not to set-up."""
            for _ in range(2):
                account = factories.make_account(client, app)
                self.accounts[account.id] = account
                self.record("user", account.user)
                post = account.post_as("First", body="Hello", status="published")
                self.posts[post["id"]] = account.id
                self.record("post", post)

        @rule(data=st.data())
        def step(self, data: st.DataObject) -> None:
            """One write. A single rule rather than one per action: hypothesis would switch
            rules off per example (swarm testing), and a short run could miss a whole kind."""
            may = {
                "create_user": len(self.accounts) < MAX_USERS,
                "create_post": bool(self.accounts) and len(self.posts) < MAX_POSTS,
                "write_user": bool(self.accounts),
                "write_post": bool(self.posts),
                "delete_post": bool(self.posts),
                "delete_user": bool(self.accounts),
                "failed_write": bool(self.posts) and len(self.accounts) >= 2,
            }
            # writes twice as likely as the rest: long histories, snapshots, status flips
            actions = [name for name, ok in may.items() if ok for _ in range(WEIGHTS.get(name, 1))]
            if not actions:  # every user deleted: start again
                actions = ["create_user"]
            getattr(self, data.draw(st.sampled_from(actions), label="action"))(data)

        # --- writes that succeed ---------------------------------------------------------------

        def create_user(self, data: st.DataObject) -> None:
            account = factories.make_account(client, app)
            self.accounts[account.id] = account
            self.record("user", account.user)

        def create_post(self, data: st.DataObject) -> None:
            owner = data.draw(st.sampled_from(sorted(self.accounts)), label="author")
            fields = {
                "title": data.draw(WORDS, label="title"),
                "body": data.draw(WORDS, label="body"),
                "status": data.draw(st.sampled_from(["draft", "published"]), label="status"),
            }
            response = client.post(
                f"/api/users/{owner}/posts", json=fields, headers=self.actor(data, owner).headers
            )
            assert response.status_code == 201, response.json
            self.posts[response.json["data"]["id"]] = owner
            self.record("post", response.json["data"])

        def write_user(self, data: st.DataObject) -> None:
            user_id = data.draw(st.sampled_from(sorted(self.accounts)), label="user")
            how = data.draw(st.sampled_from(["patch", "put", "password"]), label="how")
            if how == "password":  # by the user (an admin's reset would end their login)
                response = client.patch(
                    self.path(user_id),
                    json={"password": PASSWORD, "current_password": PASSWORD},  # still a write
                    headers=self.accounts[user_id].headers,
                )
                assert response.status_code == 200, response.json
                self.record("user", response.json["data"])
                return
            current = client.get(self.path(user_id), headers=admin.headers).json["data"]
            fields = {
                "display_name": data.draw(WORDS, label="display_name"),
                "bio": data.draw(WORDS, label="bio"),
                "username": data.draw(st.sampled_from([current["username"], unique()])),
                "email": data.draw(st.sampled_from([current["email"], f"{unique()}@example.com"])),
            }
            if how == "patch":
                chosen = data.draw(st.sets(st.sampled_from(sorted(fields)), min_size=1))
                fields = {k: v for k, v in fields.items() if k in chosen}
            method = client.put if how == "put" else client.patch
            response = method(
                self.path(user_id), json=fields, headers=self.actor(data, user_id).headers
            )
            assert response.status_code == 200, response.json
            self.record("user", response.json["data"])

        def write_post(self, data: st.DataObject) -> None:
            post_id = data.draw(st.sampled_from(sorted(self.posts)), label="post")
            how = data.draw(st.sampled_from(["patch", "put", "publish", "unpublish"]), label="how")
            fields: dict[str, Any] = {
                "title": data.draw(WORDS, label="title"),
                "body": data.draw(WORDS, label="body"),
                "status": data.draw(st.sampled_from(["draft", "published"]), label="status"),
            }
            if how == "patch":
                chosen = data.draw(st.sets(st.sampled_from(sorted(fields)), min_size=1))
                fields = {k: v for k, v in fields.items() if k in chosen}
            elif how != "put":  # a status flip alone
                fields = {"status": "published" if how == "publish" else "draft"}
            method = client.put if how == "put" else client.patch
            actor = self.actor(data, self.posts[post_id])
            response = method(self.path(post_id), json=fields, headers=actor.headers)
            assert response.status_code == 200, response.json
            self.record("post", response.json["data"])

        def delete_post(self, data: st.DataObject) -> None:
            post_id = data.draw(st.sampled_from(sorted(self.posts)), label="post")
            actor = self.actor(data, self.posts.pop(post_id))
            assert client.delete(self.path(post_id), headers=actor.headers).status_code == 204
            self.record_deleted(post_id)

        def delete_user(self, data: st.DataObject) -> None:
            """Their posts go with them: one post.deleted each, in the same transaction."""
            user_id = data.draw(st.sampled_from(sorted(self.accounts)), label="user")
            actor = self.actor(data, user_id)
            self.accounts.pop(user_id)
            assert client.delete(self.path(user_id), headers=actor.headers).status_code == 204
            self.record_deleted(user_id)
            for post_id in [p for p, owner in self.posts.items() if owner == user_id]:
                self.posts.pop(post_id)
                self.record_deleted(post_id)
                assert self.timelines[post_id][-1][0] == self.timelines[user_id][-1][0]

        # --- writes that fail: no event --------------------------------------------------------

        def failed_write(self, data: st.DataObject) -> None:
            post_id = data.draw(st.sampled_from(sorted(self.posts)), label="post")
            failure = data.draw(st.sampled_from(FAILURES), label="failure")
            owner = self.posts[post_id]
            headers = dict(self.accounts[owner].headers)
            before = event_count()
            if failure == "invalid":
                response = client.patch(self.path(post_id), json={"status": "x"}, headers=headers)
                assert response.status_code == 400
            elif failure == "stale":
                headers["If-Match"] = '"v0"'
                response = client.patch(self.path(post_id), json={"title": "T"}, headers=headers)
                assert response.status_code == 412
            elif failure == "crash":  # after the row changed and its event was inserted
                with mock.patch(
                    "app.core.uow.write_due_snapshots", side_effect=RuntimeError("injected")
                ):
                    response = client.patch(
                        self.path(post_id), json={"title": unique()}, headers=headers
                    )
                assert response.status_code == 500
            elif failure == "conflict":  # another user's username, in another case
                other = next(u for u in sorted(self.accounts) if u != owner)
                taken = client.get(self.path(other), headers=admin.headers).json["data"]
                response = client.patch(
                    self.path(owner), json={"username": taken["username"].upper()}, headers=headers
                )
                assert response.status_code == 409
            else:  # the cascade fails after the user row changed: the whole delete is undone
                with mock.patch.object(
                    PostRepository, "soft_delete_by_author", side_effect=RuntimeError("injected")
                ):
                    response = client.delete(self.path(owner), headers=admin.headers)
                assert response.status_code == 500
            assert event_count() == before

        # --- checks ------------------------------------------------------------------------------

        @invariant()
        def events_rebuild_every_row(self) -> None:
            for public_id, found in everything(app, self.kinds).items():
                events = found["events"]
                assert replayed(self.kinds[public_id], public_id, events) == found["row"]
                states = fold_states(events)
                for version, _horizon, state in found["snapshots"]:
                    assert state == states[version], (public_id, version)

        @invariant()
        def as_of_answers_what_the_api_returned(self) -> None:
            for public_id in sorted(self.touched):
                self.check_instants(public_id)
            self.touched.clear()

        def check_instants(self, public_id: str) -> None:
            timeline = self.timelines[public_id]
            path = self.path(public_id)

            def expect(instant: str, body: dict[str, Any] | None) -> None:
                response = client.get(as_of(path, instant), headers=admin.headers)
                if body is None:
                    assert response.status_code == 404, (instant, response.json)
                else:
                    assert response.status_code == 200, (instant, response.json)
                    assert response.json["data"] == body, instant

            expect(shift(timeline[0][0], -1), None)  # just before it existed
            for (instant, body), following in zip(timeline, [*timeline[1:], None], strict=True):
                expect(instant, body)
                if following is not None and _later(following[0], instant):
                    expect(midpoint(instant, following[0]), body)

        def teardown(self) -> None:
            for public_id in self.timelines:
                self.check_instants(public_id)

    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(History, settings=SETTINGS)
