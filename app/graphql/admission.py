"""Admission: the one schema extension between a request's document and its resolvers.

    parse       the document, with the token bound (graphql-core's `max_tokens`)
    validate    the spec's rules plus the depth and alias bounds (strawberry's rules)
    name        the operation and its type, for the access line and metrics
    cost        the cost bound, with this request's variables (app/graphql/limits.py)

Parsing and validation depend on the document's text alone, so both are done once per text and
kept (`documents`: CACHED_DOCUMENTS per process, the least recently used dropped first): a
client's repeated query costs a dictionary lookup. What depends on the request (the variables'
values, hence the cost; the viewer, hence what the resolvers show) is checked on every request.
A document that fails to parse is not kept (it is parsed again if sent again, bounded by the
token limit); one that fails validation is kept with its errors, and refused every time.
Validation runs with the parse, before strawberry checks the operation's type: a mutation sent
by GET is still a 405 whatever its validation errors, as before.

One extension rather than strawberry's ParserCache, ValidationCache, MaxTokensLimiter,
QueryDepthLimiter and MaxAliasesLimiter side by side: strawberry builds every extension's hooks
anew on each request, and ValidationCache's key hashes the whole document tree each time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    ASTValidationRule,
    DocumentNode,
    GraphQLError,
    GraphQLSchema,
    parse,
    specified_rules,
    validate,
)
from strawberry.extensions import SchemaExtension
from strawberry.extensions.max_aliases import create_validator as aliases_rule
from strawberry.extensions.query_depth_limiter import create_validator as depth_rule

from app.graphql.context import RequestContext
from app.graphql.limits import MAX_ALIASES, MAX_DEPTH, MAX_TOKENS, refuse_over_cost

CACHED_DOCUMENTS = 256  # parsed and validated documents kept per process (clients repeat theirs)

# The spec's rules and the two bounds, made once (strawberry's limiters would make new rule
# classes per request).
RULES: tuple[type[ASTValidationRule], ...] = (
    *specified_rules,
    depth_rule(MAX_DEPTH, None, None),
    aliases_rule(MAX_ALIASES),
)


@dataclass(frozen=True)
class Admitted:
    """A document as parsed, and what validation found in it (empty: valid)."""

    document: DocumentNode
    errors: tuple[GraphQLError, ...]
    # What other modules work out from the document once, by their own keys (the read-ahead).
    derived: dict[Any, Any] = field(default_factory=dict, compare=False)


class Documents:
    """Admitted documents by (schema, text), the least recently used dropped beyond `size`."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._kept: OrderedDict[tuple[GraphQLSchema, str], Admitted] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, schema: GraphQLSchema, query: str) -> Admitted | None:
        """The document if it was admitted before (never parses)."""
        key = (schema, query)
        with self._lock:
            admitted = self._kept.get(key)
            if admitted is not None:
                self._kept.move_to_end(key)
        return admitted

    def admit(self, schema: GraphQLSchema, query: str) -> Admitted:
        """Parse and validate `query` once, then keep it (raises GraphQLError when it does not
        parse: a syntax error, or over MAX_TOKENS; that is not kept)."""
        admitted = self.get(schema, query)
        if admitted is not None:
            return admitted
        document = parse(query, max_tokens=MAX_TOKENS)
        admitted = Admitted(document, tuple(validate(schema, document, RULES)))
        with self._lock:
            self._kept[(schema, query)] = admitted
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
        return admitted


documents = Documents(CACHED_DOCUMENTS)


class Admission(SchemaExtension):
    """Parse, validate, name and cost the request's operation (see the module's docstring)."""

    _admitted: Admitted | None = None

    def on_parse(self) -> Iterator[None]:
        execution = self.execution_context
        if execution.query is not None and execution.graphql_document is None:
            self._admitted = documents.admit(execution.schema._schema, execution.query)
            execution.graphql_document = self._admitted.document
        yield

    def on_validate(self) -> Iterator[None]:
        execution = self.execution_context
        if self._admitted is not None:
            # Set, even empty: strawberry then skips its own (uncached) validation.
            execution.pre_execution_errors = list(self._admitted.errors)
        context = execution.context
        if isinstance(context, RequestContext):
            context.operation_name = execution.operation_name
            with suppress(RuntimeError):  # no single operation: the view answers 400
                context.operation_type = execution.operation_type.value
        yield

    def on_execute(self) -> Iterator[None]:
        refuse_over_cost(self.execution_context)
        yield
