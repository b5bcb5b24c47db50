"""The schema: Query, Mutation and the bounds every request is held to (app/graphql/limits.py).

Its SDL is kept in the repository (docs/schema.graphql), served at GET /graphql/schema.graphql,
and compared with this code by a test; `make graphql-schema` rewrites the file.
"""

from __future__ import annotations

from pathlib import Path

import strawberry
from graphql import GraphQLError
from strawberry.types import ExecutionContext

from app.graphql.admission import Admission
from app.graphql.errors import report
from app.graphql.mutations import Mutation
from app.graphql.queries import Query

SDL_PATH = Path(__file__).resolve().parents[2] / "docs" / "schema.graphql"


class PostboardSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Not strawberry's (it logs every error, a 404 too): REST's handler's records."""
        report(errors)


# One extension: parse, validate, name and cost (app/graphql/admission.py).
schema = PostboardSchema(query=Query, mutation=Mutation, extensions=[Admission])


def sdl() -> str:
    """The schema's SDL as the code defines it (what the file must hold)."""
    return schema.as_str() + "\n"
