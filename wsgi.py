"""WSGI entry point: `gunicorn wsgi:app`; also the app `flask` loads (FLASK_APP=wsgi in
.flaskenv and the Makefile, `flask --app wsgi` in compose and the docs).

`app` is built when first asked for (a module `__getattr__`): the web app for gunicorn and for
Flask's own `flask run | routes | shell`; the lighter CLI app for every other `flask` command
(app/cli/support.py: `role_loading_the_app`), so that `flask db current` starts quickly.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from app import create_app
    from app.cli.support import role_loading_the_app

    built = globals()["app"] = create_app(role=role_loading_the_app())
    return built
