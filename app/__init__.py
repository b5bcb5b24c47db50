"""The application factory, in named steps.

Importing this package imports nothing heavy (each step imports what it uses): the processes
that only need a module of it (`make run`'s supervisor, gunicorn's master reading its logging
set-up) start quickly.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import click
    from flask import Flask

    from app.settings import Settings

Role = Literal["web", "worker", "cli"]


def create_app(
    settings: Settings | Mapping[str, Any] | None = None, *, role: Role = "web"
) -> Flask:
    """Build the app from `settings`, or from the environment with these overrides (checked).

    Each role imports and builds only what it uses (docs/operations.md, "Start-up cost"):
    - "web": everything (gunicorn; Flask's own `flask run`, `flask routes`, `flask shell`).
    - "worker": what tasks use: no blueprints, request pipeline (limiter, CORS, compression,
      metrics), Swagger, JWT, error pages or CLI.
    - "cli": the other `flask` commands (wsgi.py picks it), logging plain text on stderr:
      the data and the commands, each loading what it uses when it runs (`register_cli_commands`).
    """
    from flask import Flask

    from app.settings import Settings

    if not isinstance(settings, Settings):
        settings = Settings.from_env(**(settings or {}))
    app = Flask(__name__, instance_path=str(settings.instance_dir), instance_relative_config=False)
    app.config.from_mapping(settings.to_flask_config())
    app.extensions["settings"] = settings
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the envelope's field order
    settings.instance_dir.mkdir(parents=True, exist_ok=True)
    app.extensions["role"] = role

    register_data(app)
    if role == "cli":
        configure_cli_logging_for(app)
        register_cli_commands(app)
        return app
    register_domains(app)
    register_celery(app, role)
    if role == "worker":
        return app  # logging: the worker's setup_logging receiver (worker/__init__.py)
    configure_logging_for(app)
    register_web(app)
    return app


def register_web(app: Flask) -> None:
    """The web's machinery (also added to a CLI app by `flask openapi`, which needs the routes)."""
    register_extensions(app)
    register_http_security(app)
    register_blueprints(app)
    register_rate_limits(app)
    register_metrics(app)
    register_pipeline(app)
    register_errorhandlers(app)
    register_commands(app)
    register_proxy_fix(app)
    register_zero_metrics(app)


def register_data(app: Flask) -> None:
    """The database: what every role uses."""
    from sqlalchemy import event

    from app.core.db import remove_session_quietly, sqlite_pragmas
    from app.extensions import db

    db.init_app(app)
    # Registered after Flask-SQLAlchemy's own teardown, so it runs first (Flask runs them in
    # reverse): a session on a dead connection is discarded without failing the answer.
    app.teardown_appcontext(lambda _exc: remove_session_quietly(db.session))
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            event.listen(db.engine, "connect", sqlite_pragmas)
    # Prune never deletes an event the relay has not published yet.
    from app.core.outbox import unpublished_floor
    from app.core.retention import register_prune_floor

    register_prune_floor(app, lambda: unpublished_floor(db.session.connection()))


def register_domains(app: Flask) -> None:
    """What the shared machinery runs for the domains: the effects of each event after its
    commit (one table), the consumers of the event feed (another), each domain's cache warmer,
    and its backfills."""
    if app.extensions.get("domains"):
        return  # a CLI app registers them when its first command loads (and `openapi` again)
    app.extensions["domains"] = True
    from app.events.feed import init_app as register_feed_consumers
    from app.events.handlers import init_app as register_event_handlers
    from app.posts import backfills as post_backfills
    from app.posts import cache as post_cache
    from app.users import cache as user_cache
    from app.webhooks import breakers as webhook_breakers

    register_event_handlers(app)
    register_feed_consumers(app)
    user_cache.register(app)
    post_cache.register(app)
    post_backfills.register(app)
    webhook_breakers.register(app)  # their states in /metrics


def register_celery(app: Flask, role: Role) -> None:
    """Bind the one Celery app (publishing from the web and the CLI; running tasks in a worker)."""
    from app.extensions import celery

    celery.init_app(app, role=role)


def configure_logging_for(app: Flask) -> None:
    from app.core.logging import configure_logging

    if not app.testing:
        configure_logging(app.config["LOG_LEVEL"])


def configure_cli_logging_for(app: Flask) -> None:
    from app.core.cli_logging import configure_cli_logging

    if not app.testing:
        configure_cli_logging(app.config["LOG_LEVEL"])


def register_passwords(app: Flask) -> None:
    from app.core.security import passwords

    passwords.configure(app.config["ARGON2_TIME_COST"], app.config["ARGON2_MEMORY_COST_KIB"])


# Every module that declares a table: what `flask db migrate | check` compare the database with.
MODEL_MODULES = (
    "app.users.models",
    "app.posts.models",
    "app.auth.models",
    "app.core.events",
    "app.core.idempotency_store",
    "app.core.outbox",
    "app.backfill.models",
    "app.webhooks.models",
    "app.oauth.models",
)


def register_migrate(app: Flask) -> click.Command:
    """Flask-Migrate (alembic) and its `flask db` group, which reports database errors as one
    plain line, with every table in the metadata; returns the group."""
    from app.cli.support import database_errors_as_text
    from app.extensions import db, migrate

    for module in MODEL_MODULES:
        importlib.import_module(module)
    migrate.init_app(app, db, directory=str(app.root_path + "/../migrations"))
    return database_errors_as_text(app.cli.commands["db"])


def register_cli_commands(app: Flask) -> None:
    """A CLI app's commands, as stand-ins that load what a command uses when it runs (or shows
    its help): ours the domains (event effects, cache warmers, backfills) and password hashing;
    `db` Flask-Migrate; `openapi` the whole web machinery (the document is built from the
    routes). `flask --help` lists them all without loading any of it."""
    from app.cli import commands
    from app.cli.support import LazyCommand, database_errors_as_text

    def ours(command: click.Command) -> Callable[[], click.Command]:
        def load() -> click.Command:
            register_domains(app)
            register_passwords(app)
            return database_errors_as_text(command)

        return load

    def openapi() -> click.Command:
        register_domains(app)
        register_web(app)
        return app.cli.commands["openapi"]

    for command in commands():
        app.cli.add_command(LazyCommand.standing_in_for(command, load=ours(command)))
    app.cli.add_command(
        LazyCommand("db", help="Perform database migrations.", load=lambda: register_migrate(app))
    )
    app.cli.add_command(LazyCommand("openapi", help="OpenAPI commands.", load=openapi))


def register_extensions(app: Flask) -> None:
    from app.auth.guard import register_auth
    from app.core.security import SCOPE_WORDS, USER_SCOPES
    from app.extensions import api, jwt

    # Swagger UI's "Authorize" runs the authorization code flow (with PKCE) against our server.
    flow = {
        "authorizationUrl": "/oauth/authorize",
        "tokenUrl": "/oauth/token",
        "refreshUrl": "/oauth/token",
        "scopes": {scope: SCOPE_WORDS[scope] for scope in USER_SCOPES},
    }

    app.config.update(
        JWT_TOKEN_LOCATION=["headers"],
        JWT_DECODE_ALGORITHMS=[app.config["JWT_ALGORITHM"]],  # never "none"
        API_SPEC_OPTIONS={
            "components": {
                "securitySchemes": {
                    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                    "oauth2": {"type": "oauth2", "flows": {"authorizationCode": flow}},
                }
            },
            "servers": [{"url": "/"}],
        },
    )
    register_passwords(app)
    if app.extensions["role"] == "web":
        from app.core.security import passwords

        passwords.prepare()  # a CLI app adding the web machinery (`flask openapi`) needs none
    register_swagger_ui(app)
    register_migrate(app)
    jwt.init_app(app)
    register_auth(app)
    api.init_app(app)


def register_proxy_fix(app: Flask) -> None:
    """Behind TRUSTED_PROXY_COUNT proxies, the client address and scheme they forwarded."""
    if app.config["TRUSTED_PROXY_COUNT"] > 0:
        from werkzeug.middleware.proxy_fix import ProxyFix

        hops = app.config["TRUSTED_PROXY_COUNT"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]


def register_pipeline(app: Flask) -> None:
    """The one request pipeline (app/core/pipeline.py): its only before/after_request hooks."""
    from app.core.pipeline import init_pipeline

    init_pipeline(app)


def register_http_security(app: Flask) -> None:
    from app.core.http_security import init_http_security

    init_http_security(app)


def register_swagger_ui(app: Flask) -> None:
    """Serve Swagger UI's files from the swagger-ui-bundle package: the docs work offline."""
    import swagger_ui_bundle
    from flask import send_from_directory

    static_dir = swagger_ui_bundle.swagger_ui_path
    app.config["OPENAPI_SWAGGER_UI_URL"] = "/api/docs/static/"

    @app.get("/api/docs/static/<path:filename>")
    def swagger_ui_static(filename: str) -> Any:
        return send_from_directory(static_dir, filename, max_age=86400)


def register_blueprints(app: Flask) -> None:
    from app.auth.routes import blp as auth_blp
    from app.extensions import api
    from app.ops.routes import blp as ops_blp
    from app.posts.routes import blp as posts_blp
    from app.users.routes import blp as users_blp
    from app.webhooks.routes import blp as webhooks_blp

    api.register_blueprint(users_blp)
    api.register_blueprint(posts_blp)
    api.register_blueprint(auth_blp)
    api.register_blueprint(webhooks_blp)
    api.register_blueprint(ops_blp)
    from app.oauth.authorize import blp as oauth_pages_blp
    from app.oauth.routes import blp as oauth_blp
    from app.oauth.routes import server_blp as oauth_server_blp
    from app.oauth.server import init_server

    init_server(app)  # third-party apps: authlib's authorization server (docs/oauth.md)
    api.register_blueprint(oauth_blp)
    api.register_blueprint(oauth_server_blp)
    api.register_blueprint(oauth_pages_blp)
    from app.graphql import init_app as register_graphql

    register_graphql(app)  # /graphql: the same services behind another door (app/graphql/)


def register_rate_limits(app: Flask) -> None:
    from app.core.limiting import configure_limiter

    configure_limiter(app)


def register_zero_metrics(app: Flask) -> None:
    """Every metric family in the first scrape, at 0 (after the routes exist)."""
    from app.core.metrics import zero_series
    from app.core.operation_metrics import zero_operations
    from app.posts.cache import POST_KIND, USER_POST_COUNT_KIND
    from app.users.cache import USER_KIND

    zero_series(app, (USER_KIND, POST_KIND, USER_POST_COUNT_KIND))
    # After init_metrics made the multiprocess directory (building /graphql's blueprint is before).
    zero_operations("/graphql", ("query", "mutation"))


def register_metrics(app: Flask) -> None:
    from app.core.metrics import init_metrics

    init_metrics(app)


def register_errorhandlers(app: Flask) -> None:
    from app.core.errors import AppError, handle_app_error, handle_unexpected

    app.register_error_handler(AppError, handle_app_error)
    app.register_error_handler(Exception, handle_unexpected)


def register_commands(app: Flask) -> None:
    from app.cli import register_cli

    register_cli(app)
