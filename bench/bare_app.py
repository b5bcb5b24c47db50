"""The ceiling: a bare Flask app returning a constant ~200-byte JSON, served by the same
gunicorn config as the service (`gunicorn bench.bare_app:app -c gunicorn.conf.py`)."""

from __future__ import annotations

from flask import Flask, jsonify

app = Flask(__name__)
PAYLOAD = {
    "data": {
        "id": "0b7f2e8a-7a7e-4a65-9a59-3d7f1a0c9a11",
        "username": "ada_l",
        "display_name": "Ada Lovelace",
        "bio": "Analyst of engines.",
        "created_at": "2026-11-21T04:12:00+00:00",
        "updated_at": "2026-11-21T04:12:00+00:00",
        "version": 1,
    }
}


@app.get("/api/users/<user_id>")
def user(user_id: str) -> object:
    return jsonify(PAYLOAD)


@app.get("/ready")
def ready() -> object:
    return jsonify({"status": "ready"})
