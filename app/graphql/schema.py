"""The schema: Query, Mutation and the bounds every request is held to (app/graphql/limits.py).

Its SDL is kept in the repository (docs/schema.graphql), served at GET /graphql/schema.graphql,
and compared with this code by a test; `make graphql-schema` rewrites the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import strawberry
from graphql import ASTValidationRule, GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    MaxTokensLimiter,
    ParserCache,
    SchemaExtension,
    ValidationCache,
)
from strawberry.extensions.max_aliases import create_validator as aliases_rule
from strawberry.extensions.query_depth_limiter import create_validator as depth_rule
from strawberry.types import ExecutionContext

from app.graphql.context import RequestContext
from app.graphql.errors import report
from app.graphql.limits import CACHED_DOCUMENTS, MAX_ALIASES, MAX_DEPTH, MAX_TOKENS, QueryCost
from app.graphql.mutations import Mutation
from app.graphql.queries import Query

SDL_PATH = Path(__file__).resolve().parents[2] / "docs" / "schema.graphql"


class NameOperation(SchemaExtension):
    """Tell the request which operation runs (its name and type), once the document parsed."""

    def on_validate(self) -> Iterator[None]:
        execution = self.execution_context
        context = execution.context
        if isinstance(context, RequestContext):
            context.operation_name = execution.operation_name
            with suppress(RuntimeError):  # no single operation: the view answers 400
                context.operation_type = execution.operation_type.value
        yield


class PostboardSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Not strawberry's (it logs every error, a 404 too): REST's handler's records."""
        report(errors)


# QueryDepthLimiter's and MaxAliasesLimiter's rules, made once: a limiter built per request makes
# new rule classes each time, and the validation cache (keyed by the rules) would never hit.
BOUND_RULES: list[type[ASTValidationRule]] = [
    depth_rule(MAX_DEPTH, None, None),
    aliases_rule(MAX_ALIASES),
]


def _extensions() -> list[Any]:
    return [
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        lambda: AddValidationRules(BOUND_RULES),
        lambda: ParserCache(maxsize=CACHED_DOCUMENTS),
        lambda: ValidationCache(maxsize=CACHED_DOCUMENTS),
        NameOperation,
        QueryCost,
    ]


schema = PostboardSchema(query=Query, mutation=Mutation, extensions=_extensions())


def sdl() -> str:
    """The schema's SDL as the code defines it (what the file must hold)."""
    return schema.as_str() + "\n"
