"""Webhook delivery end to end, on the session's backend (the embedded default: SQLite and its
own broker, the disk cache for leases and breakers; or PostgreSQL, Redis and the Redis broker):
API writes -> outbox -> a `flask outbox relay` process -> the feed -> a real Celery worker
(thread pool, as in the Procfile) -> fan-out -> `webhooks.drain` -> a real local receiver.
And the breaker state shared by two worker processes."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from flask import Flask
from standardwebhooks import Webhook as Verifier
from werkzeug import Request, Response

from app.webhooks.breakers import breakers_for
from app.webhooks.fanout import fan_out
from tests.factories import make_account
from tests.support.outbox import RelayProcess, wait_until
from tests.support.webhook_delivery import (
    deliveries,
    feed_since,
    last_event_id,
    make_webhook,
    receiver,
)
from tests.support.workers import Worker, broker_settings, forget_queue

pytestmark = pytest.mark.slow

# As strings, for the workers' environment: the local receiver, and everything fast.
WORKER_WEBHOOKS = {
    "TASKS_ENABLED": "true",
    "WEBHOOKS_ALLOW_HTTP": "true",
    "WEBHOOKS_ALLOW_PRIVATE": "true",
    "WEBHOOKS_TIMEOUT_SECONDS": "0.5",
    "WEBHOOKS_MAX_ATTEMPTS": "3",
    "WEBHOOKS_BACKOFF_BASE_SECONDS": "0.05",
    "WEBHOOKS_BACKOFF_MAX_SECONDS": "0.2",
    "WEBHOOKS_BREAKER_FAILURES": "2",
    "WEBHOOKS_BREAKER_RESET_SECONDS": "1",
}


def queue_names(tmp_path: Path) -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"pbtest-feed-{tag}", f"pbtest-hooks-{tag}"


def breaker_state(app: Flask, hook: str, **config: Any) -> str:
    """The breaker's state as a third process sees it (the shared store)."""
    return breakers_for({**app.config, **config}).state(hook)


def test_the_worker_delivers_signed_retries_and_dead_letters(app: Flask, tmp_path: Path) -> None:
    broker = broker_settings(tmp_path)
    feed, hooks = queue_names(tmp_path)
    env = {**WORKER_WEBHOOKS, "OUTBOX_QUEUE": feed, "WEBHOOKS_QUEUE": hooks}
    worker = Worker(app, tmp_path, broker, **env)
    relay = RelayProcess(
        app.config["SQLALCHEMY_DATABASE_URI"], broker["CELERY_BROKER_URL"], feed, tmp_path
    )
    ada, bob = make_account(app.test_client(), app), make_account(app.test_client(), app)
    seen: dict[str, list[dict[str, Any]]] = {"all": [], "flaky": [], "slow": [], "bob": []}
    flaky_answers = iter([500, 500, 200])

    with receiver() as server:
        _every, every_secret = make_webhook(app, ada.id, server.url_for("/all"))
        flaky, _ = make_webhook(app, ada.id, server.url_for("/flaky"), events=("post.updated",))
        slow, _ = make_webhook(app, ada.id, server.url_for("/slow"), events=("post.created",))
        _bobs, _ = make_webhook(app, bob.id, server.url_for("/bob"), events=("post.created",))

        def record(name: str, status: int | None = None, pause: float = 0.0) -> Any:
            def handle(request: Request) -> Response:
                seen[name].append(
                    {"headers": dict(request.headers), "body": request.get_data(as_text=True)}
                )
                time.sleep(pause)
                code = status if status is not None else next(flaky_answers)
                return Response("ok" if code < 300 else "no", status=code)

            return handle

        server.expect_request("/all").respond_with_handler(record("all", 200))
        server.expect_request("/flaky").respond_with_handler(record("flaky"))
        server.expect_request("/slow").respond_with_handler(record("slow", 200, pause=1.5))
        server.expect_request("/bob").respond_with_handler(record("bob", 200))
        try:
            worker.start("-P", "threads", "-c", "8", "-Q", f"{feed},{hooks}")
            relay.start()
            since = last_event_id(app)
            post = ada.post_as("First")
            response = ada.client.patch(
                f"/api/posts/{post['id']}", json={"title": "Second"}, headers=ada.headers
            )
            assert response.status_code == 200
            events = feed_since(app, since)
            assert [e["type"] for e in events] == ["post.created", "post.updated"]

            wait_until("both events at the all-events hook", lambda: len(seen["all"]) >= 2)
            wait_until(
                "the flaky hook's delivery to succeed",
                lambda: [d["status"] for d in deliveries(app, flaky)] == ["delivered"],
                timeout=30,
            )
            wait_until(
                "the slow hook's delivery to be dead-lettered",
                lambda: [d["status"] for d in deliveries(app, slow)] == ["dead"],
                timeout=30,
            )
        finally:
            relay.stop()
            worker.stop()
            forget_queue(broker["CELERY_BROKER_URL"], feed)
            forget_queue(broker["CELERY_BROKER_URL"], hooks)
            print(worker.log()[-4000:])

    # Signed: the Standard Webhooks library verifies every delivery, in order per aggregate.
    bodies = [Verifier(every_secret).verify(r["body"], r["headers"]) for r in seen["all"]]
    assert [b["type"] for b in bodies] == ["post.created", "post.updated"]
    assert [b["data"]["version"] for b in bodies] == [1, 2]
    assert [b["data"]["id"] for b in bodies] == [e["id"] for e in events]
    # Filters and ownership: Bob's hook got nothing of Ada's post.
    assert seen["bob"] == []
    # 500, 500, 200: one delivery, one webhook-id on all three attempts.
    (flaky_delivery,) = deliveries(app, flaky)
    assert [a["status_code"] for a in flaky_delivery["tried"]] == [500, 500, 200]
    assert {r["headers"]["Webhook-Id"] for r in seen["flaky"]} == {flaky_delivery["public_id"]}
    assert len(seen["flaky"]) == 3
    # Never answering in time: dead after the configured 3 attempts, the breaker left open.
    (slow_delivery,) = deliveries(app, slow)
    assert slow_delivery["attempts"] == 3
    assert {a["error"] for a in slow_delivery["tried"]} == {"timed out after 0.5 s"}
    assert breaker_state(app, slow, WEBHOOKS_BREAKER_FAILURES=2) == "open"


def test_two_workers_share_a_targets_breaker(app: Flask, tmp_path: Path) -> None:
    """Worker A's failures open the breaker; worker B, which never called the target, skips it
    while open, then B's half-open probe succeeds and closes it for everyone."""
    broker = broker_settings(tmp_path)
    _, hooks = queue_names(tmp_path)
    env = {**WORKER_WEBHOOKS, "WEBHOOKS_QUEUE": hooks, "WEBHOOKS_MAX_ATTEMPTS": "10"}
    env["WEBHOOKS_BREAKER_RESET_SECONDS"] = "12"  # B starts well inside the open time
    first = Worker(app, tmp_path, broker, **env)
    second = Worker(app, tmp_path, broker, **env)
    producer = Celery("hooks-probe", broker=broker["CELERY_BROKER_URL"])
    ada = make_account(app.test_client(), app)
    healthy = {"now": False}
    arrived: list[float] = []

    def handle(request: Request) -> Response:
        arrived.append(time.monotonic())
        return Response("ok", status=200) if healthy["now"] else Response("down", status=503)

    with receiver() as server:
        server.expect_request("/in").respond_with_handler(handle)
        hook, _ = make_webhook(app, ada.id, server.url_for("/in"))
        since = last_event_id(app)
        ada.post_as("Shared")
        with app.app_context():
            fan_out(feed_since(app, since))
        try:
            first.start("-P", "threads", "-c", "4", "-Q", hooks)
            producer.send_task("webhooks.drain", args=[hook], queue=hooks)
            wait_until("worker A to open the breaker", lambda: len(arrived) >= 2, timeout=30)
            wait_until(
                "the open state in the shared store",
                lambda: breaker_state(app, hook, WEBHOOKS_BREAKER_RESET_SECONDS=12) == "open",
            )
            first.stop()
            second.start("-P", "threads", "-c", "4", "-Q", hooks)
            opened_requests = len(arrived)
            producer.send_task("webhooks.drain", args=[hook], queue=hooks)
            wait_until(
                "worker B to skip the open target",
                lambda: "webhook_drain_skipped" in second.log(),
                timeout=30,
            )
            assert len(arrived) == opened_requests  # B made no call while open
            healthy["now"] = True
            wait_until(
                "worker B's half-open probe to deliver",
                lambda: [d["status"] for d in deliveries(app, hook)] == ["delivered"],
                timeout=30,
            )
        finally:
            first.stop()
            second.stop()
            producer.close()
            forget_queue(broker["CELERY_BROKER_URL"], hooks)
            print(first.log()[-2000:], second.log()[-3000:])
    assert breaker_state(app, hook, WEBHOOKS_BREAKER_RESET_SECONDS=12) == "closed"
    (delivery,) = deliveries(app, hook)
    assert [a["status_code"] for a in delivery["tried"]] == [503, 503, 200]
    assert "webhook_attempt_failed" in first.log()
    # B's first word on the target was a skip: it knew of A's failures from the shared state.
    said = [line.get("event") for line in second.lines() if line.get("webhook") == hook]
    assert said[0] == "webhook_drain_skipped", said
    assert "webhook_attempt_failed" not in said
