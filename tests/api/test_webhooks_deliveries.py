"""Webhook deliveries (contract §8): the list with every attempt, newest first and paginated,
in a constant number of queries; retrying a dead delivery (and only a dead one), which publishes
`webhooks.drain` on WEBHOOKS_QUEUE; who receives which event (`WebhookService.recipients`).

Delivery and attempt rows are written through the repository, as the delivery side writes them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask

from app.extensions import db
from app.webhooks.models import DEAD, DELIVERED, PENDING
from app.webhooks.service import DRAIN_TASK, WebhookService
from tests.factories import UNKNOWN_ID
from tests.support.assertions import assert_error
from tests.support.cache import sql_statements
from tests.support.webhooks import T0, add_delivery, new_webhook
from tests.support.workers import forget_queue

DELIVERY_FIELDS = {
    "id",
    "event_id",
    "event_type",
    "status",
    "attempts",
    "next_attempt_at",
    "created_at",
    "delivered_at",
    "last_status_code",
    "last_error",
    "attempts_log",
}


def deliveries_path(webhook_id: str) -> str:
    return f"/api/webhooks/{webhook_id}/deliveries"


def retry_path(webhook_id: str, delivery_id: str) -> str:
    return f"/api/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"


# The list ------------------------------------------------------------------------------------


def test_deliveries_newest_first_with_every_attempt(app, client, account):
    hook = new_webhook(client, account)
    dead = add_delivery(app, hook, status=DEAD, codes=(500, None, 503), created_at=T0)
    ok = add_delivery(app, hook, status=DELIVERED, codes=(500, 200), created_at=T0 + timedelta(1))
    waiting = add_delivery(app, hook, status=PENDING, codes=(), created_at=T0 + timedelta(2))
    response = client.get(deliveries_path(hook), headers=account.headers)
    assert response.status_code == 200, response.json
    data = response.json["data"]
    assert [d["id"] for d in data] == [waiting, ok, dead]
    assert all(set(d) == DELIVERY_FIELDS for d in data)
    first_dead = data[2]
    assert (first_dead["status"], first_dead["attempts"], first_dead["last_status_code"]) == (
        DEAD,
        3,
        503,
    )
    assert first_dead["attempts_log"] == [
        {
            "attempt": 1,
            "started_at": (T0 + timedelta(seconds=1)).isoformat(),
            "duration_ms": 10,
            "status_code": 500,
            "error": "HTTP 500",
            "next_retry_at": (T0 + timedelta(minutes=1)).isoformat(),
        },
        {
            "attempt": 2,
            "started_at": (T0 + timedelta(seconds=2)).isoformat(),
            "duration_ms": 20,
            "status_code": None,
            "error": "timeout",
            "next_retry_at": (T0 + timedelta(minutes=2)).isoformat(),
        },
        {
            "attempt": 3,
            "started_at": (T0 + timedelta(seconds=3)).isoformat(),
            "duration_ms": 30,
            "status_code": 503,
            "error": "HTTP 503",
            "next_retry_at": None,
        },
    ]
    delivered = data[1]
    assert delivered["delivered_at"] == (T0 + timedelta(days=1, seconds=1)).isoformat()
    assert [a["status_code"] for a in delivered["attempts_log"]] == [500, 200]
    assert data[0]["attempts_log"] == []
    assert data[0]["next_attempt_at"] == (T0 + timedelta(days=2, minutes=5)).isoformat()
    assert "payload" not in response.get_data(as_text=True)
    assert response.json["meta"]["total"] == 3


def test_deliveries_page_by_offset_and_cursor(app, client, account):
    hook = new_webhook(client, account)
    made = [add_delivery(app, hook, created_at=T0 + timedelta(minutes=i)) for i in range(5)]
    newest_first = made[::-1]
    page2 = client.get(deliveries_path(hook) + "?page=2&per_page=2", headers=account.headers)
    assert [d["id"] for d in page2.json["data"]] == newest_first[2:4]
    assert page2.json["meta"]["total"] == 5
    seen: list[str] = []
    cursor: str | None = None
    while True:
        query: dict[str, Any] = {"per_page": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get(deliveries_path(hook), query_string=query, headers=account.headers)
        assert page.status_code == 200
        seen += [d["id"] for d in page.json["data"]]
        cursor = page.json["meta"]["next_cursor"]
        if cursor is None:
            break
        assert 'rel="next"' in page.headers["Link"]
    assert seen == newest_first


def test_a_deliveries_cursor_is_bound_to_its_webhook(app, client, account):
    first, second = new_webhook(client, account), new_webhook(client, account)
    for i in range(3):
        add_delivery(app, first, created_at=T0 + timedelta(minutes=i))
    cursor = client.get(deliveries_path(first) + "?per_page=1", headers=account.headers).json[
        "meta"
    ]["next_cursor"]
    response = client.get(
        deliveries_path(second), query_string={"cursor": cursor}, headers=account.headers
    )
    assert_error(response, 400, "VALIDATION_ERROR")


def test_the_list_costs_the_same_queries_for_2_or_20_deliveries(app, client, account):
    """Attempts are loaded for the whole page in one query: no N+1."""
    small, big = new_webhook(client, account), new_webhook(client, account)
    for i in range(2):
        add_delivery(app, small, codes=(500, 500, 500), created_at=T0 + timedelta(minutes=i))
    for i in range(20):
        add_delivery(app, big, codes=(500, 500, 500), created_at=T0 + timedelta(minutes=i))
    counts = []
    for hook, expected in ((small, 2), (big, 20)):
        with sql_statements(app) as statements:
            response = client.get(deliveries_path(hook) + "?per_page=50", headers=account.headers)
        assert len(response.json["data"]) == expected
        assert all(len(d["attempts_log"]) == 3 for d in response.json["data"])
        counts.append(len([s for s in statements if "webhook_attempts" in s]))
        counts.append(len(statements))
    assert counts[0] == counts[2] == 1
    assert counts[1] == counts[3]


def test_only_the_owner_and_admins_see_deliveries(app, client, account, other, admin):
    hook = new_webhook(client, account)
    add_delivery(app, hook)
    assert client.get(deliveries_path(hook), headers=admin.headers).status_code == 200
    assert_error(client.get(deliveries_path(hook), headers=other.headers), 403, "FORBIDDEN")
    assert_error(client.get(deliveries_path(UNKNOWN_ID), headers=account.headers), 404, "NOT_FOUND")
    assert_error(client.get(deliveries_path("nope"), headers=account.headers), 404, "NOT_FOUND")


# Retry -------------------------------------------------------------------------------------


def test_retrying_a_dead_delivery_makes_it_pending_with_a_fresh_budget(app, client, account):
    hook = new_webhook(client, account)
    delivery = add_delivery(app, hook, status=DEAD, codes=(500, 502, None))
    before = datetime.now(UTC)
    response = client.post(retry_path(hook, delivery), headers=account.headers)
    assert response.status_code == 202, response.json
    data = response.json["data"]
    assert set(data) == DELIVERY_FIELDS
    assert (data["id"], data["status"], data["attempts"]) == (delivery, PENDING, 0)
    due = datetime.fromisoformat(data["next_attempt_at"])
    assert before - timedelta(seconds=1) <= due <= datetime.now(UTC)
    # The log of the earlier attempts is kept.
    assert [a["status_code"] for a in data["attempts_log"]] == [500, 502, None]
    listed = client.get(deliveries_path(hook), headers=account.headers).json["data"]
    assert listed == [data]
    # Pending now: a second retry is a conflict.
    assert_error(client.post(retry_path(hook, delivery), headers=account.headers), 409, "CONFLICT")


@pytest.mark.parametrize("status", [PENDING, DELIVERED])
def test_only_a_dead_delivery_can_be_retried(app, client, account, status):
    hook = new_webhook(client, account)
    delivery = add_delivery(app, hook, status=status, codes=(200,) if status == DELIVERED else ())
    error = assert_error(
        client.post(retry_path(hook, delivery), headers=account.headers), 409, "CONFLICT"
    )
    assert status in error["message"]
    after = client.get(deliveries_path(hook), headers=account.headers).json["data"][0]
    assert after["status"] == status


def test_retry_rules_for_ids_people_and_disabled_webhooks(app, client, account, other, admin):
    hook = new_webhook(client, account)
    elsewhere = new_webhook(client, account)
    delivery = add_delivery(app, hook)
    foreign = add_delivery(app, elsewhere)
    for path in (
        retry_path(hook, UNKNOWN_ID),
        retry_path(hook, foreign),  # another webhook's delivery
        retry_path(UNKNOWN_ID, delivery),
        retry_path(hook, "not-a-uuid"),
    ):
        assert_error(client.post(path, headers=account.headers), 404, "NOT_FOUND")
    assert_error(client.post(retry_path(hook, delivery), headers=other.headers), 403, "FORBIDDEN")
    off = client.patch(f"/api/webhooks/{hook}", json={"active": False}, headers=account.headers)
    assert off.status_code == 200
    error = assert_error(
        client.post(retry_path(hook, delivery), headers=admin.headers), 409, "CONFLICT"
    )
    assert "disabled" in error["message"]
    client.patch(f"/api/webhooks/{hook}", json={"active": True}, headers=account.headers)
    assert client.post(retry_path(hook, delivery), headers=admin.headers).status_code == 202


def test_a_retry_publishes_the_drain_on_the_webhooks_queue(app, client, account, make_app):
    """With tasks on, the retry's commit is followed by `webhooks.drain` [webhook id] on
    WEBHOOKS_QUEUE of the real broker (the embedded one, or Redis)."""
    from kombu import Connection

    hook = new_webhook(client, account)
    delivery = add_delivery(app, hook)
    queue = f"pbtest-webhooks-{uuid.uuid4().hex[:10]}"
    publisher = make_app(TASKS_ENABLED=True, WEBHOOKS_QUEUE=queue)
    broker = publisher.config["CELERY_BROKER_URL"]
    try:
        response = publisher.test_client().post(retry_path(hook, delivery), headers=account.headers)
        assert response.status_code == 202, response.json
        with Connection(broker) as conn:
            simple = conn.SimpleQueue(queue)
            try:
                message = simple.get(block=True, timeout=10)
                message.ack()
            finally:
                simple.close()
        assert message.headers["task"] == DRAIN_TASK
        args, kwargs, _embed = message.decode()
        assert (args, kwargs) == ([hook], {})
    finally:
        forget_queue(broker, queue)


# Who receives what ---------------------------------------------------------------------------


def recipients(app: Flask, event_type: str, aggregate_type: str, aggregate_id: str) -> set[str]:
    event = {"type": event_type, "aggregate": {"type": aggregate_type, "id": aggregate_id}}
    with app.app_context():
        found = {str(w.public_id) for w in WebhookService.from_app().recipients(event)}
        db.session.remove()
    return found


def test_recipients_are_the_owners_and_every_admins(app, client, account, other, admin):
    mine_all = new_webhook(client, account)
    mine_posts = new_webhook(client, account, ["post.created"])
    theirs = new_webhook(client, other)
    admins = new_webhook(client, admin)
    admins_users = new_webhook(client, admin, ["user.updated"])
    post = account.post_as("Hello")

    assert recipients(app, "post.created", "post", post["id"]) == {mine_all, mine_posts, admins}
    assert recipients(app, "post.updated", "post", post["id"]) == {mine_all, admins}
    assert recipients(app, "user.updated", "user", account.id) == {mine_all, admins, admins_users}
    assert recipients(app, "user.updated", "user", other.id) == {theirs, admins, admins_users}
    # Unknown aggregates reach admins only; malformed events nobody.
    assert recipients(app, "post.created", "post", UNKNOWN_ID) == {admins}
    assert recipients(app, "post.created", "post", "not-a-uuid") == set()

    # Inactive and deleted webhooks receive nothing; nor do deleted owners' webhooks.
    client.patch(f"/api/webhooks/{mine_posts}", json={"active": False}, headers=account.headers)
    client.delete(f"/api/webhooks/{admins}", headers=admin.headers)
    assert recipients(app, "post.created", "post", post["id"]) == {mine_all}
    assert client.delete(f"/api/users/{account.id}", headers=account.headers).status_code == 204
    assert recipients(app, "post.deleted", "post", post["id"]) == set()
    assert recipients(app, "user.deleted", "user", account.id) == set()


def test_a_delivery_is_revived_once_whatever_the_concurrent_retries(app, client, account):
    """The retry's update changes only rows still dead: the second of two racing retries
    changes nothing (and the service answers it 409)."""
    from app.webhooks.repository import DeliveryRepository, WebhookRepository

    hook = new_webhook(client, account)
    add_delivery(app, hook)
    with app.app_context():
        webhook = WebhookRepository(db.session).get(uuid.UUID(hook))
        assert webhook is not None
        deliveries = DeliveryRepository(db.session)
        (dead,) = deliveries.dead(webhook.id)
        now = datetime.now(UTC)
        assert deliveries.revive(webhook.id, [dead.id], now) == 1
        assert deliveries.revive(webhook.id, [dead.id], now) == 0
        assert deliveries.revive(webhook.id, None, now) == 0
        db.session.rollback()
        db.session.remove()
