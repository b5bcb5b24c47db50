"""Webhook delivery in process, against a real local receiver (pytest-httpserver) and the real
database and lease/breaker stores of the session's backend: who gets which event (fan-out),
signatures the Standard Webhooks library verifies, retries with one webhook-id, dead letters,
the breaker, head of line and order per aggregate, and what a delivery refuses (redirects, a DNS
answer turned private). Outbound alone: test_outbound.py; the same code under a real Celery
worker: tests/system/test_webhook_worker.py."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from standardwebhooks import Webhook as Verifier
from werkzeug import Request, Response

from app.extensions import db
from app.webhooks.breakers import breakers
from app.webhooks.dispatch import Drained, drain
from app.webhooks.fanout import fan_out
from app.webhooks.models import Webhook
from tests.factories import Account, set_admin
from tests.support.webhook_delivery import (
    FAST_WEBHOOKS,
    deliveries,
    feed_since,
    last_event_id,
    make_webhook,
    receiver,
)


@pytest.fixture
def hooks_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(**FAST_WEBHOOKS, WEBHOOKS_MAX_ATTEMPTS=3, WEBHOOKS_BREAKER_FAILURES=5)


def run_drain(app: Flask, webhook_id: str, **options: Any) -> Drained:
    with app.app_context():
        return drain(uuid.UUID(webhook_id), **options)


def drain_until(app: Flask, webhook_id: str, done: Callable[[], bool], limit: float = 20) -> None:
    """Drain as the task would: again after `again_in`, until `done()`."""
    deadline = time.monotonic() + limit
    while not done():
        assert time.monotonic() < deadline, deliveries(app, webhook_id)
        result = run_drain(app, webhook_id)
        if result.again_in:
            time.sleep(min(result.again_in, 1.5))


def fan(app: Flask, events: list[dict[str, Any]]) -> int:
    with app.app_context():
        try:
            return fan_out(events)
        finally:
            db.session.remove()


def test_fan_out_follows_ownership_admin_filters_and_skips_repeats(
    hooks_app: Flask, make_account: Callable[..., Account]
) -> None:
    ada, bob, root = make_account(), make_account(), make_account()
    set_admin(hooks_app, root.id)
    url = "http://127.0.0.1:9/hook"
    ada_posts, _ = make_webhook(hooks_app, ada.id, url, events=("post.created",))
    ada_all, _ = make_webhook(hooks_app, ada.id, url)
    admin_users, _ = make_webhook(hooks_app, root.id, url, events=("user.updated",))
    admin_all, _ = make_webhook(hooks_app, root.id, url)
    off, _ = make_webhook(hooks_app, ada.id, url, active=False)
    gone, _ = make_webhook(hooks_app, ada.id, url, deleted=True)
    since = last_event_id(hooks_app)
    ada.post_as("Ada's")
    bob.post_as("Bob's")
    response = ada.client.patch(f"/api/users/{ada.id}", json={"bio": "new"}, headers=ada.headers)
    assert response.status_code == 200
    events = feed_since(hooks_app, since)
    assert [e["type"] for e in events] == ["post.created", "post.created", "user.updated"]

    fan(hooks_app, events)
    kinds = {
        name: [d["event_type"] for d in deliveries(hooks_app, hook)]
        for name, hook in {
            "ada_posts": ada_posts,
            "ada_all": ada_all,
            "admin_users": admin_users,
            "admin_all": admin_all,
            "off": off,
            "gone": gone,
        }.items()
    }
    assert kinds == {
        "ada_posts": ["post.created"],  # her post only, not Bob's; not her user.updated
        "ada_all": ["post.created", "user.updated"],
        "admin_users": ["user.updated"],
        "admin_all": ["post.created", "post.created", "user.updated"],
        "off": [],
        "gone": [],
    }
    # The body is the event, built once: {"type", "timestamp", "data"}.
    (first,) = deliveries(hooks_app, ada_posts)
    assert '"data":{"id":"' + events[0]["id"] in first["payload"]
    # A redelivered batch (the feed is at least once) records nothing twice.
    fan(hooks_app, events)
    assert len(deliveries(hooks_app, admin_all)) == 3
    assert len(deliveries(hooks_app, ada_all)) == 2


def signed_receiver_checks(
    secret: str, seen: list[dict[str, Any]]
) -> Callable[[Request], Response]:
    def handle(request: Request) -> Response:
        body = request.get_data()
        headers = dict(request.headers)
        payload = Verifier(secret).verify(body, headers)  # raises if the signature is wrong
        seen.append({"id": request.headers["webhook-id"], "payload": payload})
        return Response("ok", status=200)

    return handle


def test_deliveries_are_signed_and_verified_by_standard_webhooks(
    hooks_app: Flask, account: Account
) -> None:
    with receiver() as server:
        hook, secret = make_webhook(hooks_app, account.id, server.url_for("/in"))
        since = last_event_id(hooks_app)
        post = account.post_as("Signed")
        fan(hooks_app, feed_since(hooks_app, since))
        seen: list[dict[str, Any]] = []
        server.expect_request("/in", method="POST").respond_with_handler(
            signed_receiver_checks(secret, seen)
        )
        result = run_drain(hooks_app, hook)
        assert result.delivered == 1, deliveries(hooks_app, hook)
        (got,) = seen
        assert got["payload"]["type"] == "post.created"
        assert got["payload"]["data"]["aggregate"] == {"type": "post", "id": post["id"]}
        assert got["payload"]["data"]["changes"]["title"] == "Signed"
        (request, _), *_ = server.log
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["Host"] == f"127.0.0.1:{server.port}"
        (delivery,) = deliveries(hooks_app, hook)
        assert got["id"] == delivery["public_id"]
        assert delivery["status"] == "delivered"


def test_500_500_200_is_delivered_with_one_webhook_id(hooks_app: Flask, account: Account) -> None:
    with receiver() as server:
        hook, secret = make_webhook(hooks_app, account.id, server.url_for("/in"))
        since = last_event_id(hooks_app)
        account.post_as("Retried")
        fan(hooks_app, feed_since(hooks_app, since))
        answers = iter([500, 500, 200])
        ids: list[str] = []

        def handle(request: Request) -> Response:
            Verifier(secret).verify(request.get_data(), dict(request.headers))
            ids.append(request.headers["webhook-id"])
            return Response("nope" if (status := next(answers)) >= 500 else "ok", status=status)

        server.expect_request("/in").respond_with_handler(handle)
        first = run_drain(hooks_app, hook)
        assert first.failed == 1
        assert first.again_in is not None
        drain_until(hooks_app, hook, lambda: deliveries(hooks_app, hook)[0]["status"] != "pending")
        (delivery,) = deliveries(hooks_app, hook)
        assert delivery["status"] == "delivered"
        assert len(ids) == 3
        assert set(ids) == {delivery["public_id"]}
        assert [(a["attempt"], a["status_code"]) for a in delivery["tried"]] == [
            (1, 500),
            (2, 500),
            (3, 200),
        ]
        assert delivery["tried"][0]["error"] == "HTTP 500: nope"


def test_a_target_that_never_answers_is_dead_lettered_with_its_breaker_open(
    make_app: Callable[..., Flask], account: Account
) -> None:
    app = make_app(**FAST_WEBHOOKS, WEBHOOKS_MAX_ATTEMPTS=3, WEBHOOKS_BREAKER_FAILURES=2)

    arrived: list[float] = []

    def hang(request: Request) -> Response:
        arrived.append(time.monotonic())
        time.sleep(1.5)  # past the 0.5 s timeout
        return Response("late", status=200)

    with receiver() as server:
        server.expect_request("/slow").respond_with_handler(hang)
        hook, _ = make_webhook(app, account.id, server.url_for("/slow"))
        since = last_event_id(app)
        account.post_as("Never")
        account.post_as("Waits")
        fan(app, feed_since(app, since))
        started = time.monotonic()
        run_drain(app, hook)  # attempt 1
        time.sleep(0.3)  # past its backoff (at most 0.05 s)
        run_drain(app, hook)  # attempt 2: the breaker opens
        with app.app_context():
            assert breakers().state(hook) == "open"
            assert breakers().wait_seconds(hook) > 0
        skipped = run_drain(app, hook)
        assert skipped.skipped_open
        assert skipped.again_in
        assert skipped.again_in <= 1.0
        assert len(arrived) == 2  # open: the deliveries wait, no attempt spent
        drain_until(app, hook, lambda: deliveries(app, hook)[0]["status"] != "pending")
        first, second = deliveries(app, hook)
        assert first["status"] == "dead"
        assert first["attempts"] == 3
        assert [a["error"] for a in first["tried"]] == ["timed out after 0.5 s"] * 3
        assert len(arrived) == 3
        # Head of line: the second waited; it was never attempted while the first was pending.
        assert second["status"] == "pending"
        assert second["attempts"] == 0
        with app.app_context():
            assert breakers().state(hook) == "open"  # the half-open probe (attempt 3) failed
        assert time.monotonic() - started < 10


def test_a_redirect_is_not_followed(hooks_app: Flask, account: Account) -> None:
    with receiver() as server:
        server.expect_request("/in").respond_with_data(
            "", status=302, headers={"Location": server.url_for("/elsewhere")}
        )
        server.expect_request("/elsewhere").respond_with_data("took it")
        hook, _ = make_webhook(hooks_app, account.id, server.url_for("/in"))
        since = last_event_id(hooks_app)
        account.post_as("Moved")
        fan(hooks_app, feed_since(hooks_app, since))
        result = run_drain(hooks_app, hook)
        assert result.failed == 1
        assert [request.path for request, _ in server.log] == ["/in"]
        (delivery,) = deliveries(hooks_app, hook)
        assert delivery["last_status_code"] == 302
        assert delivery["last_error"].startswith("redirect not followed (HTTP 302")


def test_a_dns_answer_turned_private_is_refused_at_delivery(
    make_app: Callable[..., Flask], account: Account
) -> None:
    """Registration saw a public address; at delivery the name answers loopback: nothing is
    sent (the receiver on 127.0.0.1 gets nothing) and the attempt records why."""
    app = make_app(**{**FAST_WEBHOOKS, "WEBHOOKS_ALLOW_PRIVATE": False})
    answers = iter(["93.184.216.34", "127.0.0.1"])

    def rebinding(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    with receiver() as server:
        server.expect_request("/in").respond_with_data("ok")
        url = f"http://hooks.example.test:{server.port}/in"
        from app.core.ssrf import check_target

        check_target(url, allow_http=True, allow_private=False, resolve=rebinding)  # registration
        hook, _ = make_webhook(app, account.id, url)
        since = last_event_id(app)
        account.post_as("Rebound")
        fan(app, feed_since(app, since))
        result = run_drain(app, hook, resolve=rebinding)
        assert result.failed == 1
        assert server.log == []
        (delivery,) = deliveries(app, hook)
        assert delivery["last_status_code"] is None
        assert delivery["last_error"] == "refused: resolves to 127.0.0.1, a loopback address"


def test_an_event_waits_for_its_predecessor_still_being_fanned_out(
    hooks_app: Flask, account: Account
) -> None:
    """Two feed messages consumed at once: version 2's deliveries are recorded before version
    1's. The drain sends nothing until version 1 is recorded, then both, in order."""
    with receiver() as server:
        server.expect_request("/in").respond_with_data("ok")
        hook, secret = make_webhook(hooks_app, account.id, server.url_for("/in"))
        since = last_event_id(hooks_app)
        post = account.post_as("First")
        response = account.client.patch(
            f"/api/posts/{post['id']}", json={"title": "Second"}, headers=account.headers
        )
        assert response.status_code == 200
        first, second = feed_since(hooks_app, since)
        fan(hooks_app, [second])
        waiting = run_drain(hooks_app, hook)
        assert waiting.again_in == 1.0
        assert server.log == []
        fan(hooks_app, [first])
        assert run_drain(hooks_app, hook).delivered == 2
        versions = [
            Verifier(secret).verify(request.get_data(), dict(request.headers))["data"]["version"]
            for request, _ in server.log
        ]
        assert versions == [1, 2]


def test_a_predecessor_fanned_out_while_disabled_does_not_hold_the_next(
    hooks_app: Flask, account: Account
) -> None:
    from app.core.feed import consume

    with receiver() as server:
        server.expect_request("/in").respond_with_data("ok")
        hook, _ = make_webhook(hooks_app, account.id, server.url_for("/in"))
        since = last_event_id(hooks_app)
        post = account.post_as("First")
        response = account.client.patch(
            f"/api/posts/{post['id']}", json={"title": "Second"}, headers=account.headers
        )
        assert response.status_code == 200
        first, second = feed_since(hooks_app, since)
        with hooks_app.app_context():
            db.session.execute(sa.update(Webhook).values(active=False))
            db.session.commit()
            consume([first], delivery="while-disabled")  # fan-out finished it: no delivery
            db.session.execute(sa.update(Webhook).values(active=True))
            db.session.commit()
            consume([second], delivery="enabled-again")
            db.session.remove()
        result = run_drain(hooks_app, hook)
        assert result.delivered == 1
        assert [d["event_id"] for d in deliveries(hooks_app, hook)] == [second["id"]]
