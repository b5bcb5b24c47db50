"""Logs of the API in process, through the production handler (contract §7): no password, token
or secret reaches the log on any path (register, login, refresh, logout, refused tokens), and
every access line carries its fields.

The formatter on its own is in tests/unit/test_log_format.py; real processes (gunicorn, a Celery
worker, the CLI) in tests/system/test_logging.py.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta

import jwt
from flask import Flask
from flask.testing import FlaskClient

from tests.factories import WRONG_KEY, bearer, unique
from tests.support.logs import ACCESS_FIELDS, assert_absent, parse_lines, secret, token_parts


def test_no_password_token_or_secret_reaches_the_log(
    json_logs, app: Flask, client: FlaskClient
) -> None:
    secrets: dict[str, str] = {
        "SECRET_KEY": app.config["SECRET_KEY"],
        "JWT_SECRET_KEY": app.config["JWT_SECRET_KEY"],
    }
    name = unique()
    email = f"{name}@example.com"
    secrets["password"] = secret("pw")

    response = client.post(
        "/api/users", json={"email": email, "username": name, "password": secrets["password"]}
    )
    assert response.status_code == 201
    user_id = response.json["data"]["id"]

    # Secrets in unexpected places of a body, a form body, broken JSON.
    secrets |= {k: secret(k) for k in ("body_pw", "body_secret", "nested_pw", "nested_token")}
    response = client.post(
        "/api/users",
        json={
            "email": f"x{email}",
            "username": f"x{name}",
            "password": secrets["body_pw"],
            "secret": secrets["body_secret"],
            "profile": {"password": secrets["nested_pw"], "token": secrets["nested_token"]},
        },
    )
    assert response.status_code == 400
    secrets |= {"form_pw": secret("form"), "broken_json_pw": secret("broken")}
    response = client.post(
        "/api/users",
        data=f"password={secrets['form_pw']}&secret=x",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 415
    response = client.post(
        "/api/auth/login",
        data='{"email": "a@example.com", "password": "' + secrets["broken_json_pw"] + '"',
        content_type="application/json",
    )
    assert response.status_code == 400

    # Logins: a wrong password, then the right one.
    secrets["wrong_pw"] = secret("wrong")
    response = client.post(
        "/api/auth/login", json={"email": email, "password": secrets["wrong_pw"]}
    )
    assert response.status_code == 401
    tokens = client.post(
        "/api/auth/login", json={"email": email, "password": secrets["password"]}
    ).json["data"]
    access, refresh = tokens["access_token"], tokens["refresh_token"]
    secrets |= {f"access_{k}": v for k, v in token_parts(access).items()}
    secrets |= {f"refresh_{k}": v for k, v in token_parts(refresh).items()}
    secrets["authorization_header"] = f"Bearer {access}"

    me_request_id = f"req-me-{uuid.uuid4().hex[:8]}"
    response = client.get("/api/me", headers={**bearer(access), "X-Request-ID": me_request_id})
    assert response.status_code == 200

    # A query string full of secrets.
    secrets |= {"query_token": secret("qt"), "query_pw": secret("qp"), "query_secret": secret("qs")}
    query = (
        f"token={secrets['query_token']}&password={secrets['query_pw']}"
        f"&secret={secrets['query_secret']}"
    )
    query_request_id = f"req-query-{uuid.uuid4().hex[:8]}"
    response = client.get(f"/api/posts?{query}", headers={"X-Request-ID": query_request_id})
    assert response.status_code < 500

    # Refresh (rotation), a password change with a wrong and then the right current password.
    rotated = client.post("/api/auth/refresh", headers=bearer(refresh)).json["data"]
    access2, refresh2 = rotated["access_token"], rotated["refresh_token"]
    secrets |= {f"access2_{k}": v for k, v in token_parts(access2).items()}
    secrets |= {f"refresh2_{k}": v for k, v in token_parts(refresh2).items()}
    secrets |= {"new_pw": secret("newpw"), "bad_current_pw": secret("badcur")}
    response = client.patch(
        f"/api/users/{user_id}",
        json={"password": secrets["new_pw"], "current_password": secrets["bad_current_pw"]},
        headers=bearer(access2),
    )
    assert 400 <= response.status_code < 500
    response = client.patch(
        f"/api/users/{user_id}",
        json={"password": secrets["new_pw"], "current_password": secrets["password"]},
        headers=bearer(access2),
    )
    assert response.status_code == 200, response.json

    # Forged, alg-none, expired and malformed tokens; Basic credentials; a refresh as access.
    claims = jwt.decode(access2, options={"verify_signature": False})
    now = datetime.now(UTC)
    forged = jwt.encode(claims, WRONG_KEY, algorithm="HS256")
    unsigned = jwt.encode(claims, key=None, algorithm="none")
    expired = jwt.encode(
        {**claims, "iat": now - timedelta(hours=2), "exp": now - timedelta(hours=1)},
        app.config["JWT_SECRET_KEY"],
        algorithm="HS256",
    )
    malformed = secret("not-a-jwt")
    secrets |= {f"forged_{k}": v for k, v in token_parts(forged).items()}
    secrets |= {"unsigned": unsigned, "expired": expired, "malformed": malformed}
    secrets |= {f"expired_{k}": v for k, v in token_parts(expired).items()}
    for bad in (forged, unsigned, expired, malformed):
        assert client.get("/api/me", headers=bearer(bad)).status_code == 401
    basic = base64.b64encode(f"{email}:{secrets['password']}".encode()).decode()
    secrets["basic"] = basic
    assert client.get("/api/me", headers={"Authorization": f"Basic {basic}"}).status_code == 401
    assert client.post("/api/auth/refresh", headers=bearer(access2)).status_code == 401

    # Logout, then the logged-out token and the spent refresh token again.
    assert client.post("/api/auth/logout", headers=bearer(access2)).status_code == 204
    assert client.get("/api/me", headers=bearer(access2)).status_code == 401
    assert client.post("/api/auth/refresh", headers=bearer(refresh)).status_code == 401

    out = json_logs()
    assert_absent(out, secrets)
    lines = parse_lines(out)
    access_lines = [line for line in lines if line["logger"] == "app.access"]
    assert len(access_lines) == 20  # one per request above
    for line in access_lines:
        for field in ACCESS_FIELDS:
            assert field in line, (field, line)
        assert "?" not in line["path"]
        assert isinstance(line["status"], int)
        assert isinstance(line["duration_ms"], int | float)
    me_line = next(line for line in access_lines if line["request_id"] == me_request_id)
    assert me_line["method"] == "GET"
    assert (me_line["path"], me_line["route"], me_line["status"]) == ("/api/me", "/api/me", 200)
    assert me_line.get("user_id") == user_id, "the access line names the authenticated user"
    query_line = next(line for line in access_lines if line["request_id"] == query_request_id)
    assert query_line["path"] == "/api/posts"  # never the query string
    security = [line for line in lines if line["logger"] == "app.security"]
    assert {"login_failed", "revoked_token_used"} <= {line["event"] for line in security}
    for line in security:
        assert line.get("request_id"), line
