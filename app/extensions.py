"""Extension objects, created unbound; `create_app` binds them.

`db` is made on import: every role uses it. The others are made on first use (PEP 562 module
`__getattr__`), so a process imports only the machinery its role binds: a CLI call never loads
flask-smorest, Flask-Migrate (alembic), JWT or Celery unless its command needs them, and a
worker never loads flask-smorest or JWT. `from app.extensions import celery` works as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask_sqlalchemy import SQLAlchemy

from app.core.db import Base

if TYPE_CHECKING:
    from flask_jwt_extended import JWTManager
    from flask_migrate import Migrate

    from app.core.api import RestApi
    from app.core.tasks import PostboardCelery

    api: RestApi
    migrate: Migrate
    jwt: JWTManager
    celery: PostboardCelery

db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False})


def _api() -> Any:
    from app.core.api import RestApi

    return RestApi()


def _migrate() -> Any:
    from flask_migrate import Migrate

    return Migrate(compare_type=True, render_as_batch=True)


def _jwt() -> Any:
    from flask_jwt_extended import JWTManager

    return JWTManager()


def _celery() -> Any:
    from app.core.tasks import PostboardCelery

    return PostboardCelery("postboard")


_FACTORIES: dict[str, Callable[[], Any]] = {
    "api": _api,
    "migrate": _migrate,
    "jwt": _jwt,
    "celery": _celery,
}
_lock = threading.Lock()  # two threads asking at once still get one object


def __getattr__(name: str) -> Any:
    factory = _FACTORIES.get(name)
    if factory is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _lock:
        if name not in globals():
            globals()[name] = factory()  # later look-ups find the module attribute itself
        return globals()[name]
