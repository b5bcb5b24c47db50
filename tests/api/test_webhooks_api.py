"""Creating webhook subscriptions (contract §8 "Webhooks"): the secret shown once, validation of
event types and of targets (SSRF rules at registration), the allow flags, the per-user limit,
401 for anonymous callers, and the routes in OpenAPI (reads and writes: test_webhooks_access)."""

from __future__ import annotations

import base64

import pytest

from app.events.handlers import EVENT_HANDLERS
from app.webhooks.models import EVENT_TYPES
from tests.factories import UNKNOWN_ID
from tests.support.assertions import assert_error
from tests.support.webhooks import (
    PUBLIC_URL,
    PUBLIC_V6_URL,
    WEBHOOK_FIELDS,
    create,
    created,
    detail_fields,
    item,
)


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
