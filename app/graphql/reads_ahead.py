"""The cache entries a query's root fields are about to read, named before it runs.

`user(id)`, `post(id)` and `me` each start with one cache read (the same as REST's GET). The
view declares this function (`@reads_ahead`, app/core/cached_read.py), so the pipeline reads
those entries in its one Redis round trip, with the rate limit, and the resolvers' reads take
the replies instead of a round trip each (app/core/prefetch.py): what REST's cached GET gets.

Only a document already admitted and valid (app/graphql/admission.py) is looked at: nothing is
parsed before the rate limit has spoken, and a client's repeated query is what gains. Only the
root fields of a query (never a mutation, which writes before it reads). A guess that turns out
wrong (a field skipped by a directive, an id that is not a UUID) costs an unused GET, never a
wrong answer: the resolvers' reads are the cache's ordinary ones, MAC check and all.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLSchema,
    OperationType,
    StringValueNode,
    VariableNode,
    get_operation_ast,
)

from app.graphql.admission import documents
from app.posts.cache import POST_KIND
from app.users.cache import USER_KIND

BY_ID = {"user": USER_KIND, "post": POST_KIND}  # root field -> the cache kind its read uses
MAX_READS = 16  # aliases are bounded (15) anyway; this keeps the round trip small whatever


# How one root field names its entry: (cache kind, "me" | "id" | "variable", the id or the name).
Source = tuple[str, str, Any]


def root_reads(
    schema: GraphQLSchema,
    query: Any,
    variables: Any,
    operation_name: Any,
    viewer: str | None,
) -> list[tuple[str, object]]:
    """(cache kind, public id) of each entry the operation's root fields read first."""
    if not isinstance(query, str):
        return []
    admitted = documents.get(schema, query)
    if admitted is None or admitted.errors:
        return []
    name = operation_name if isinstance(operation_name, str) else None
    key = (__name__, name)
    sources: list[Source] | None = admitted.derived.get(key)
    if sources is None:  # worked out once per document and operation
        sources = admitted.derived[key] = _sources(admitted.document, name)
    values = variables if isinstance(variables, Mapping) else {}
    reads: list[tuple[str, object]] = []
    for kind, how, given in sources:
        if how == "me":
            public = _uuid(viewer)
        elif how == "variable":
            public = _uuid(values.get(given))
        else:
            public = given
        if public is not None:
            reads.append((kind, public))
    return reads


def _sources(document: DocumentNode, operation_name: str | None) -> list[Source]:
    operation = get_operation_ast(document, operation_name)
    if operation is None or operation.operation != OperationType.QUERY:
        return []
    sources: list[Source] = []
    for selection in operation.selection_set.selections:
        if not isinstance(selection, FieldNode):
            continue
        field = selection.name.value
        if field == "me":
            sources.append((USER_KIND, "me", None))
        elif field in BY_ID:
            source = _id_argument(selection)
            if source is not None:
                sources.append((BY_ID[field], *source))
    return sources[:MAX_READS]


def _id_argument(node: FieldNode) -> tuple[str, Any] | None:
    for argument in node.arguments or ():
        if argument.name.value != "id":
            continue
        value = argument.value
        if isinstance(value, StringValueNode):
            public = _uuid(value.value)
            return ("id", public) if public is not None else None
        if isinstance(value, VariableNode):
            return "variable", value.name.value
    return None


def _uuid(value: Any) -> uuid.UUID | None:
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
