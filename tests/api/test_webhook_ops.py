"""What operators see of webhook delivery: its metrics in /metrics (deliveries by outcome, breaker
states read from the shared store, the webhooks queue's depth), and what the beat sweep picks."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from celery import Celery
from flask import Flask

from app.core.db import utcnow
from app.extensions import db
from app.webhooks.breakers import breakers
from app.webhooks.dispatch import due_targets
from app.webhooks.drain_lease import drain_leases, lease_name
from app.webhooks.fanout import fan_out
from app.webhooks.models import Webhook, WebhookDelivery
from tests.factories import Account
from tests.support.metrics import scrape, value
from tests.support.webhook_delivery import FAST_WEBHOOKS, feed_since, last_event_id, make_webhook
from tests.support.workers import broker_settings, forget_queue


@pytest.fixture
def hooks_app(make_app: Callable[..., Flask], tmp_path: Path) -> Flask:
    queue = f"pbtest-hooks-{uuid.uuid4().hex[:8]}"
    # An open time that outlasts the test, however slow the machine.
    settings = {**FAST_WEBHOOKS, "WEBHOOKS_BREAKER_RESET_SECONDS": 30}
    return make_app(**settings, **broker_settings(tmp_path), WEBHOOKS_QUEUE=queue)


def test_metrics_show_deliveries_breakers_and_the_webhooks_queue(
    hooks_app: Flask, account: Account
) -> None:
    hook, _ = make_webhook(hooks_app, account.id, "http://127.0.0.1:9/hook")
    queue = hooks_app.config["WEBHOOKS_QUEUE"]
    broker = hooks_app.config["CELERY_BROKER_URL"]
    client = hooks_app.test_client()
    before = scrape(client)
    for outcome in ("delivered", "failed", "dead", "skipped_open"):  # present from the start
        assert ("postboard_webhook_deliveries_total", frozenset({("outcome", outcome)})) in before
    assert value(before, "postboard_celery_queue_depth", queue=queue) == 0
    with hooks_app.app_context():
        shared = breakers()
        breaker = shared.breaker(hook)
        breaker.open()  # as failures would: the state goes to the shared store
        opened = value(scrape(client), "postboard_webhook_breakers", state="open")
        breaker.close()
        closed = value(scrape(client), "postboard_webhook_breakers", state="open")
    assert opened == closed + 1
    producer = Celery("hooks-depth", broker=broker)
    try:
        producer.send_task("webhooks.drain", args=[hook], queue=queue)
        assert value(scrape(client), "postboard_celery_queue_depth", queue=queue) == 1
    finally:
        producer.close()
        forget_queue(broker, queue)


def test_the_sweep_picks_due_targets_not_held_nor_open(hooks_app: Flask, account: Account) -> None:
    url = "http://127.0.0.1:9/hook"
    due, _ = make_webhook(hooks_app, account.id, url)
    held, _ = make_webhook(hooks_app, account.id, url)
    tripped, _ = make_webhook(hooks_app, account.id, url)
    _idle, _ = make_webhook(hooks_app, account.id, url, events=("user.deleted",))
    backing_off, _ = make_webhook(hooks_app, account.id, url)
    since = last_event_id(hooks_app)
    account.post_as("Swept")
    account.post_as("Behind it")
    with hooks_app.app_context():
        fan_out(feed_since(hooks_app, since))
        # Its head failed once and waits a minute: the delivery behind it is not due before.
        head = db.session.scalars(
            sa.select(WebhookDelivery)
            .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .where(Webhook.public_id == uuid.UUID(backing_off))
            .order_by(WebhookDelivery.id)
        ).first()
        assert head is not None
        head.attempts, head.next_attempt_at = 1, utcnow() + timedelta(minutes=1)
        db.session.commit()
        leases = drain_leases()
        assert leases.acquire(lease_name(held), "another-drain", 30)
        breakers().breaker(tripped).open()
        try:
            picked = {str(public_id) for public_id in due_targets()}
        finally:
            leases.release(lease_name(held), "another-drain")
            breakers().breaker(tripped).close()
    # held: a drain runs; tripped: waits; idle: nothing pending; backing off: its head waits
    assert picked == {due}


def test_deleting_a_webhook_drops_its_breaker_state(hooks_app: Flask, account: Account) -> None:
    hook, _ = make_webhook(hooks_app, account.id, "http://127.0.0.1:9/hook")
    client = hooks_app.test_client()
    with hooks_app.app_context():
        breakers().breaker(hook).open()
        assert breakers().count_by_state()["open"] >= 1
        before = breakers().count_by_state()["open"]
    response = client.delete(f"/api/webhooks/{hook}", headers=account.headers)
    assert response.status_code == 204, response.get_json()
    with hooks_app.app_context():
        assert breakers().count_by_state()["open"] == before - 1
        assert breakers().wait_seconds(hook) == 0
