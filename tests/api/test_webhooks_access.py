"""Webhook subscriptions after their creation (contract §8): get with ETags, the caller's own
list (an admin's `?all=true`), patch and soft delete, owner/admin/other rules, 404s."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from app.extensions import db
from tests.factories import UNKNOWN_ID
from tests.support.assertions import assert_error
from tests.support.webhooks import PUBLIC_V6_URL, created, detail_fields, item

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
