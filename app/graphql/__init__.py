"""GraphQL: one more door into the same service (contract §8; docs/graphql.md).

A domain-side package, beside the REST routes: its resolvers call the same services
(app/users/service.py, app/posts/service.py) with the same caller, never a repository, and its
one route goes through the one request pipeline (app/core/pipeline.py) like every other.

    routes.py    POST/GET /graphql and GET /graphql/schema.graphql: the view, its statuses
    schema.py    the strawberry schema and its bounds; its SDL (docs/schema.graphql)
    queries.py   user, users, post, posts, me          mutations.py  the writes
    types.py     User, Post, their connections          context.py    per-request state
    paging.py    first/after as REST's per_page/cursor  limits.py     depth, aliases, tokens, cost
    errors.py    extensions.code / details, as REST's codes and details
"""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register /graphql on `app`'s API, its errors rendered GraphQL's way."""
    from app.core.errors import render_errors_with
    from app.extensions import api
    from app.graphql.errors import from_envelope
    from app.graphql.routes import blp

    api.register_blueprint(blp)
    render_errors_with(app, blp.name, from_envelope)
