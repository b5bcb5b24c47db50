"""Webhook subscriptions (contract §8 "Webhooks"): create, list, get, patch, delete; the secret
shown once; owner and admin rules; validation of event types and of targets (SSRF rules at
registration); the per-user limit."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from app.events.handlers import EVENT_HANDLERS
from app.extensions import db
from app.webhooks.models import EVENT_TYPES
from tests.factories import UNKNOWN_ID
from tests.support.assertions import assert_error

# Public addresses as literals: checked like any name, with no DNS lookup in the tests.
PUBLIC_URL = "https://93.184.216.34/hooks/postboard"
PUBLIC_V6_URL = "https://[2606:2800:220:1:248:1893:25c8:1946]:8443/in?x=1"
WEBHOOK_FIELDS = {
    "id",
    "url",
    "events",
    "description",
    "active",
    "disabled_reason",
    "created_at",
    "updated_at",
    "version",
}


def create(client, account, body: dict[str, Any] | None = None, **kwargs: Any):
    body = {"url": PUBLIC_URL, "events": ["post.created"]} if body is None else body
    return client.post("/api/webhooks", json=body, headers=account.headers, **kwargs)


def created(client, account, **fields: Any) -> dict[str, Any]:
    response = create(client, account, {"url": PUBLIC_URL, "events": ["*"], **fields})
    assert response.status_code == 201, response.json
    return response.json["data"]


def item(webhook_id: str) -> str:
    return f"/api/webhooks/{webhook_id}"


def detail_fields(error: dict[str, Any]) -> set[str]:
    return {d["field"] for d in error.get("details", [])}


def test_the_event_types_are_the_histories_types() -> None:
    assert set(EVENT_TYPES) == set(EVENT_HANDLERS)


# Create ----------------------------------------------------------------------------------------


def test_create_answers_201_with_location_and_the_secret_once(client, account):
    response = create(
        client,
        account,
        {"url": PUBLIC_URL, "events": ["post.created", "user.updated"], "description": "Chat"},
    )
    assert response.status_code == 201, response.json
    data = response.json["data"]
    assert set(data) == WEBHOOK_FIELDS | {"secret"}
    assert data["url"] == PUBLIC_URL
    assert data["events"] == ["post.created", "user.updated"]
    assert (data["description"], data["active"], data["disabled_reason"]) == ("Chat", True, None)
    assert data["created_at"] == data["updated_at"]
    assert data["created_at"].endswith("+00:00")
    assert response.headers["Location"].endswith(item(data["id"]))
    assert response.headers["ETag"]
    secret = data["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 24

    # Never again: not in GET, not in the list, not in a PATCH answer.
    got = client.get(item(data["id"]), headers=account.headers)
    listed = client.get("/api/webhooks", headers=account.headers)
    patched = client.patch(item(data["id"]), json={"description": "x"}, headers=account.headers)
    for answer in (got, listed, patched):
        assert answer.status_code == 200, answer.json
        assert secret not in answer.get_data(as_text=True)
        assert "secret" not in answer.get_data(as_text=True)
    assert set(got.json["data"]) == WEBHOOK_FIELDS


def test_every_webhook_gets_its_own_secret(client, account):
    secrets = {created(client, account)["secret"] for _ in range(3)}
    assert len(secrets) == 3


def test_the_secret_signs_as_standard_webhooks_expects(client, account):
    """A receiver built on the reference library accepts the secret as given."""
    standardwebhooks = pytest.importorskip(
        "standardwebhooks",
        reason="standardwebhooks not installed: the delivery side (branch wh-delivery) adds it",
    )
    secret = created(client, account)["secret"]
    hook = standardwebhooks.Webhook(secret)
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    signature = hook.sign("msg_1", now, '{"a":1}')
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }
    assert hook.verify('{"a":1}', headers) == {"a": 1}


def test_duplicate_event_types_are_dropped_in_order(client, account):
    events = ["post.updated", "post.created", "post.updated", "post.created"]
    response = create(client, account, {"url": PUBLIC_URL, "events": events})
    assert response.status_code == 201, response.json
    assert response.json["data"]["events"] == ["post.updated", "post.created"]


def test_every_known_type_and_the_wildcard_are_accepted(client, account):
    response = create(client, account, {"url": PUBLIC_URL, "events": list(EVENT_TYPES)})
    assert response.status_code == 201, response.json
    assert response.json["data"]["events"] == list(EVENT_TYPES)
    response = create(client, account, {"url": PUBLIC_V6_URL, "events": ["*", "*"]})
    assert response.status_code == 201, response.json
    assert response.json["data"]["events"] == ["*"]


def test_anonymous_callers_get_401(client):
    response = client.post("/api/webhooks", json={"url": PUBLIC_URL, "events": ["*"]})
    error = assert_error(response, 401, "UNAUTHENTICATED")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert error["message"]
    for method, path in (
        ("get", "/api/webhooks"),
        ("get", item(UNKNOWN_ID)),
        ("patch", item(UNKNOWN_ID)),
        ("delete", item(UNKNOWN_ID)),
        ("get", f"{item(UNKNOWN_ID)}/deliveries"),
        ("post", f"{item(UNKNOWN_ID)}/deliveries/{UNKNOWN_ID}/retry"),
    ):
        assert_error(getattr(client, method)(path, json={}), 401, "UNAUTHENTICATED")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": ["*"]}, "url"),
        ({"url": PUBLIC_URL}, "events"),
        ({"url": PUBLIC_URL, "events": []}, "events"),
        ({"url": PUBLIC_URL, "events": "*"}, "events"),
        ({"url": PUBLIC_URL, "events": "post.created"}, "events"),
        ({"url": PUBLIC_URL, "events": ["post.published"]}, "events.0"),
        ({"url": PUBLIC_URL, "events": ["POST.CREATED"]}, "events.0"),
        ({"url": PUBLIC_URL, "events": ["post.created", 7]}, "events.1"),
        ({"url": PUBLIC_URL, "events": [None]}, "events.0"),
        ({"url": PUBLIC_URL, "events": [["*"]]}, "events.0"),
        ({"url": PUBLIC_URL, "events": ["*", "post.created"]}, "events"),
        ({"url": PUBLIC_URL, "events": ["post.créated"]}, "events.0"),
        ({"url": PUBLIC_URL, "events": ["post.created"] * 51}, "events"),
        ({"url": PUBLIC_URL, "events": [{}] * 50_000}, "events"),
        ({"url": 42, "events": ["*"]}, "url"),
        ({"url": None, "events": ["*"]}, "url"),
        ({"url": "", "events": ["*"]}, "url"),
        ({"url": ["https://a"], "events": ["*"]}, "url"),
        ({"url": PUBLIC_URL, "events": ["*"], "description": 5}, "description"),
        ({"url": PUBLIC_URL, "events": ["*"], "description": "x" * 501}, "description"),
        ({"url": PUBLIC_URL, "events": ["*"], "description": "a\u202eb"}, "description"),
        ({"url": PUBLIC_URL, "events": ["*"], "active": False}, "active"),
        ({"url": PUBLIC_URL, "events": ["*"], "secret": "whsec_mine"}, "secret"),
    ],
)
def test_invalid_bodies_are_400_naming_the_field(client, account, row_counts, body, field):
    before = row_counts()
    error = assert_error(create(client, account, body), 400, "VALIDATION_ERROR")
    assert field in detail_fields(error), error
    assert row_counts() == before


def test_a_huge_list_is_refused_with_one_detail(client, account):
    body = {"url": PUBLIC_URL, "events": ["nope"] * 40_000}
    error = assert_error(create(client, account, body), 400, "VALIDATION_ERROR")
    assert error["details"] == [{"field": "events", "message": "At most 50 event types."}]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://93.184.216.34/x", "https://"),
        ("http://93.184.216.34/x", "https://"),
        ("file:///etc/passwd", "https://"),
        ("javascript:alert(1)", "https://"),
        ("93.184.216.34/x", "https://"),
        ("https://user:pw@93.184.216.34/x", "user name or password"),
        ("https://user@93.184.216.34/x", "user name or password"),
        ("https://localhost/x", "loopback"),
        ("https://127.0.0.1/x", "loopback"),
        ("https://2130706433/x", "loopback"),
        ("https://0177.0.0.1/x", "loopback"),
        ("https://0x7f.1/x", "loopback"),
        ("https://[::1]/x", "loopback"),
        ("https://[::ffff:127.0.0.1]/x", "loopback"),
        ("https://[::ffff:7f00:1]/x", "loopback"),
        ("https://10.0.0.8/x", "private"),
        ("https://192.168.0.1/x", "private"),
        ("https://169.254.169.254/latest/meta-data", "metadata"),
        ("https://[fd00:ec2::254]/x", "metadata"),
        ("https://100.100.100.200/x", "metadata"),
        ("https://100.64.0.1/x", "shared"),
        ("https://[fe80::1]/x", "link-local"),
        ("https://224.0.0.1/x", "multicast"),
        ("https://0.0.0.0/x", "unspecified"),
        ("https://[64:ff9b::7f00:1]/x", "loopback"),
        ("https://no-such-host.invalid/x", "does not resolve"),
        ("https://93.184.216.34:99999/x", "not a valid URL"),
        ("https://93.184.216.34/a b", "printable ASCII"),
        ("https://93.184.216.34/ünïcode", "printable ASCII"),
        ("https://exämple.com/", "printable ASCII"),
    ],
)
def test_unsafe_targets_are_400_on_url_saying_why(client, account, row_counts, url, reason):
    before = row_counts()
    error = assert_error(
        create(client, account, {"url": url, "events": ["*"]}), 400, "VALIDATION_ERROR"
    )
    assert [d["field"] for d in error["details"]] == ["url"], error
    assert reason in error["details"][0]["message"], error
    assert row_counts() == before


def test_a_url_over_2048_characters_is_400(client, account):
    url = PUBLIC_URL + "/" + "a" * 2048
    error = assert_error(
        create(client, account, {"url": url, "events": ["*"]}), 400, "VALIDATION_ERROR"
    )
    assert detail_fields(error) == {"url"}


def test_the_allow_flags_lift_their_rules_only(make_app):
    plain = make_app(WEBHOOKS_ALLOW_HTTP=True).test_client()
    private = make_app(WEBHOOKS_ALLOW_PRIVATE=True).test_client()
    from tests.factories import make_account

    for client, allowed, refused, reason in (
        (plain, "http://93.184.216.34/x", "http://127.0.0.1/x", "loopback"),
        (private, "https://127.0.0.1:8443/x", "http://127.0.0.1/x", "https://"),
        (private, "https://10.1.2.3/x", "ftp://10.1.2.3/x", "https://"),
    ):
        account = make_account(client, client.application)
        ok = create(client, account, {"url": allowed, "events": ["*"]})
        assert ok.status_code == 201, ok.json
        error = assert_error(
            create(client, account, {"url": refused, "events": ["*"]}), 400, "VALIDATION_ERROR"
        )
        assert reason in error["details"][0]["message"]


def test_the_per_user_limit_is_409_and_counts_live_webhooks(make_app):
    from tests.factories import make_account

    client = make_app(WEBHOOKS_PER_USER=2).test_client()
    account = make_account(client, client.application)
    other = make_account(client, client.application)
    first, second = (created(client, account) for _ in range(2))
    # Deactivated still counts (reactivating needs no check); deleted does not.
    client.patch(item(first["id"]), json={"active": False}, headers=account.headers)
    error = assert_error(create(client, account), 409, "CONFLICT")
    assert "2 webhooks" in error["message"]
    assert created(client, other)["id"]  # per user
    assert client.delete(item(second["id"]), headers=account.headers).status_code == 204
    assert created(client, account)["id"]
    assert_error(create(client, account), 409, "CONFLICT")


def test_an_idempotent_retry_of_a_create_creates_nothing_new(client, account, row_counts):
    headers = {**account.headers, "Idempotency-Key": "create-hook-1"}
    body = {"url": PUBLIC_URL, "events": ["*"]}
    first = client.post("/api/webhooks", json=body, headers=headers)
    before = row_counts()
    again = client.post("/api/webhooks", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json
    assert row_counts() == before


# Read and list --------------------------------------------------------------------------------


def test_get_has_an_etag_and_answers_304(client, account):
    hook = created(client, account)
    first = client.get(item(hook["id"]), headers=account.headers)
    assert first.status_code == 200
    assert first.json["data"] == {k: v for k, v in hook.items() if k != "secret"}
    etag = first.headers["ETag"]
    again = client.get(item(hook["id"]), headers={**account.headers, "If-None-Match": etag})
    assert again.status_code == 304


def test_owner_admin_and_others(client, account, other, admin):
    hook = created(client, account)
    path = item(hook["id"])
    assert client.get(path, headers=admin.headers).status_code == 200
    for method in ("get", "patch", "delete"):
        response = getattr(client, method)(path, json={"active": False}, headers=other.headers)
        assert_error(response, 403, "FORBIDDEN")
    deliveries = client.get(f"{path}/deliveries", headers=other.headers)
    assert_error(deliveries, 403, "FORBIDDEN")
    patched = client.patch(path, json={"description": "by admin"}, headers=admin.headers)
    assert patched.status_code == 200, patched.json
    assert client.delete(path, headers=admin.headers).status_code == 204
    assert_error(client.get(path, headers=account.headers), 404, "NOT_FOUND")


@pytest.mark.parametrize("path", [item(UNKNOWN_ID), "/api/webhooks/not-a-uuid", "/api/webhooks/1"])
def test_unknown_or_malformed_ids_are_404(client, account, path):
    for method in ("get", "patch", "delete"):
        assert_error(
            getattr(client, method)(path, json={}, headers=account.headers), 404, "NOT_FOUND"
        )


def test_the_list_holds_the_callers_own_newest_first_paginated(client, account, other, admin):
    mine = [created(client, account, description=f"n{i}")["id"] for i in range(5)]
    created(client, other)
    created(client, admin)
    page1 = client.get("/api/webhooks?per_page=2", headers=account.headers)
    assert page1.status_code == 200
    assert [w["id"] for w in page1.json["data"]] == mine[::-1][:2]
    assert page1.json["meta"] == {
        "per_page": 2,
        "page": 1,
        "total": 5,
        "next_cursor": page1.json["meta"]["next_cursor"],
    }
    assert 'rel="next"' in page1.headers["Link"]
    cursor = page1.json["meta"]["next_cursor"]
    seen = [w["id"] for w in page1.json["data"]]
    while cursor:
        page = client.get(
            "/api/webhooks", query_string={"cursor": cursor, "per_page": 2}, headers=account.headers
        )
        assert page.status_code == 200
        seen += [w["id"] for w in page.json["data"]]
        cursor = page.json["meta"]["next_cursor"]
    assert seen == mine[::-1]
    # An admin's own list is their own; ?all=true is everyone's; not for others.
    admin_own = client.get("/api/webhooks", headers=admin.headers).json["data"]
    assert len(admin_own) == 1
    everyone = client.get("/api/webhooks?all=true&per_page=100", headers=admin.headers)
    assert everyone.json["meta"]["total"] == 7
    assert_error(client.get("/api/webhooks?all=true", headers=account.headers), 403, "FORBIDDEN")


def test_list_paging_errors_are_400(client, account):
    for query in ("per_page=0", "per_page=101", "page=0", "cursor=tampered", "page=1&cursor=x"):
        assert_error(
            client.get(f"/api/webhooks?{query}", headers=account.headers), 400, "VALIDATION_ERROR"
        )


def test_a_cursor_of_another_users_list_is_400(client, account, other):
    for _ in range(3):
        created(client, account)
    cursor = client.get("/api/webhooks?per_page=1", headers=account.headers).json["meta"][
        "next_cursor"
    ]
    response = client.get("/api/webhooks", query_string={"cursor": cursor}, headers=other.headers)
    assert_error(response, 400, "VALIDATION_ERROR")


# Patch and delete -----------------------------------------------------------------------------


def test_patch_changes_fields_bumps_version_and_honours_if_match(client, account):
    hook = created(client, account)
    path = item(hook["id"])
    etag = client.get(path, headers=account.headers).headers["ETag"]
    response = client.patch(
        path,
        json={"url": PUBLIC_V6_URL, "events": ["user.deleted"], "description": None},
        headers={**account.headers, "If-Match": etag},
    )
    assert response.status_code == 200, response.json
    data = response.json["data"]
    assert (data["url"], data["events"], data["description"]) == (
        PUBLIC_V6_URL,
        ["user.deleted"],
        None,
    )
    assert data["version"] == hook["version"] + 1
    assert data["updated_at"] > hook["updated_at"]
    stale = client.patch(
        path, json={"active": False}, headers={**account.headers, "If-Match": etag}
    )
    assert_error(stale, 412, "PRECONDITION_FAILED")
    assert client.get(path, headers=account.headers).json["data"]["active"] is True
    unchanged = client.patch(path, json={}, headers=account.headers)
    assert unchanged.json["data"]["version"] == data["version"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "https://127.0.0.1/x"}, "url"),
        ({"url": "http://93.184.216.34/x"}, "url"),
        ({"events": []}, "events"),
        ({"events": ["nope"]}, "events.0"),
        ({"active": "false"}, "active"),
        ({"active": 0}, "active"),
        ({"active": None}, "active"),
        ({"secret": "whsec_x"}, "secret"),
        ({"id": UNKNOWN_ID}, "id"),
    ],
)
def test_patch_validates_like_create(client, account, body, field):
    hook = created(client, account)
    error = assert_error(
        client.patch(item(hook["id"]), json=body, headers=account.headers), 400, "VALIDATION_ERROR"
    )
    assert field in detail_fields(error)
    assert client.get(item(hook["id"]), headers=account.headers).json["data"]["version"] == 1


def test_deactivate_then_activate_clears_the_disabled_reason(app, client, account):
    hook = created(client, account)
    path = item(hook["id"])
    with app.app_context():
        db.session.execute(
            sa.text("UPDATE webhooks SET active = :f, disabled_reason = 'target kept failing'"),
            {"f": False},
        )
        db.session.commit()
    off = client.get(path, headers=account.headers).json["data"]
    assert (off["active"], off["disabled_reason"]) == (False, "target kept failing")
    on = client.patch(path, json={"active": True}, headers=account.headers).json["data"]
    assert (on["active"], on["disabled_reason"]) == (True, None)


def test_delete_is_a_soft_delete_then_404_everywhere(app, client, account):
    hook = created(client, account)
    path = item(hook["id"])
    response = client.delete(path, headers=account.headers)
    assert response.status_code == 204
    assert response.get_data() == b""
    for method in ("get", "patch", "delete"):
        assert_error(
            getattr(client, method)(path, json={}, headers=account.headers), 404, "NOT_FOUND"
        )
    assert_error(client.get(f"{path}/deliveries", headers=account.headers), 404, "NOT_FOUND")
    assert client.get("/api/webhooks", headers=account.headers).json["data"] == []
    with app.app_context():
        row = db.session.execute(
            sa.text("SELECT deleted_at, active FROM webhooks WHERE public_id = :p"),
            {
                "p": uuid.UUID(hook["id"])
                if db.engine.dialect.name == "postgresql"
                else uuid.UUID(hook["id"]).hex
            },
        ).one()
        db.session.remove()
    assert row.deleted_at is not None
    assert not row.active


def test_delete_with_a_stale_if_match_is_412(client, account):
    hook = created(client, account)
    path = item(hook["id"])
    client.patch(path, json={"description": "v2"}, headers=account.headers)
    stale = client.delete(path, headers={**account.headers, "If-Match": '"v1"'})
    assert_error(stale, 412, "PRECONDITION_FAILED")
    assert client.get(path, headers=account.headers).status_code == 200


def test_the_secret_never_reaches_the_logs(client, account, json_logs):
    secret = created(client, account)["secret"]
    assert secret not in json_logs()


def test_the_routes_are_in_the_openapi_document(client):
    spec = client.get("/api/openapi.json").get_json()
    expected = {
        ("/api/webhooks", "get"): "listWebhooks",
        ("/api/webhooks", "post"): "createWebhook",
        ("/api/webhooks/{webhook_id}", "get"): "getWebhook",
        ("/api/webhooks/{webhook_id}", "patch"): "patchWebhook",
        ("/api/webhooks/{webhook_id}", "delete"): "deleteWebhook",
        ("/api/webhooks/{webhook_id}/deliveries", "get"): "listWebhookDeliveries",
        (
            "/api/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
            "post",
        ): "retryWebhookDelivery",
    }
    for (path, method), operation_id in expected.items():
        operation = spec["paths"][path][method]
        assert operation["operationId"] == operation_id
        assert "401" in operation["responses"]
        error = operation["responses"]["401"]
        assert error == {"$ref": "#/components/responses/UNAUTHORIZED"}
    created_schema = spec["components"]["schemas"]["CreatedWebhook"]
    assert "secret" in created_schema["properties"]
    assert "secret" not in spec["components"]["schemas"]["Webhook"]["properties"]
    assert "409" in spec["paths"]["/api/webhooks"]["post"]["responses"]
    assert (
        "409"
        in spec["paths"]["/api/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"]["post"][
            "responses"
        ]
    )
