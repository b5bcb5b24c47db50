"""Bounds on what one GraphQL request may ask, all checked before any resolver runs (so a
refused query never reaches the database): tokens (at parse), depth and aliases (validation
rules), and cost (before execution, with the variables' values); app/graphql/admission.py
applies them.

Cost: every field that selects objects counts the objects it may return, times those of the
fields above it; a connection returns up to `first` (its default when not given). So
`users(first: 20) { edges { node { posts(first: 5) { edges { node { title } } } } } }` costs
20 + 20 + 20 + 100 + 100 + 100 = 360.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    get_named_type,
)
from graphql.type import GraphQLInterfaceType, GraphQLObjectType
from strawberry.types import ExecutionContext

from app.core.errors import ValidationFailed
from app.core.pagination import DEFAULT_PER_PAGE, MAX_PER_PAGE

MAX_TOKENS = 2000  # the standard introspection query is about 350
MAX_DEPTH = 10  # users > edges > node > posts > edges > node > field is 7
MAX_ALIASES = 15
MAX_COST = 5000


def refuse_over_cost(execution: ExecutionContext) -> None:
    """Refuse the operation (a GraphQLError) when its document holds several operations and none
    is named, or when its cost is over MAX_COST; after validation, before execution."""
    document = execution.graphql_document
    if document is None:
        return
    # What the client sent (strawberry has no public name for it: operation_name falls back).
    if execution._provided_operation_name is None:
        operations = sum(isinstance(d, OperationDefinitionNode) for d in document.definitions)
        if operations > 1:  # the spec's rule; strawberry would quietly run the first one
            refusal = ValidationFailed(
                "The document holds several operations: name the one to run.",
                details=[{"field": "operationName", "message": "Required with several."}],
            )
            raise GraphQLError(refusal.message, original_error=refusal)
    cost = query_cost(
        execution.schema._schema, document, execution.operation_name, execution.variables or {}
    )
    if cost > MAX_COST:
        refusal = ValidationFailed(
            f"The query costs {cost}, over the limit of {MAX_COST}: ask for fewer items "
            "(`first`) or nest fewer lists.",
            details=[{"field": "query", "message": f"Cost {cost} > {MAX_COST}."}],
        )
        raise GraphQLError(refusal.message, original_error=refusal)


def query_cost(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation_name: str | None,
    variables: Mapping[str, Any],
) -> int:
    """The cost of the operation `operation_name` picks in `document` (0 if there is none)."""
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    chosen = [
        o
        for o in operations
        if operation_name is None or (o.name and o.name.value == operation_name)
    ]
    if len(chosen) != 1:
        return 0
    operation = chosen[0]
    root = schema.get_root_type(operation.operation)
    if root is None:
        return 0
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    return _cost(schema, root, operation.selection_set, 1, fragments, variables, frozenset())


def _cost(
    schema: GraphQLSchema,
    parent: Any,
    selection_set: SelectionSetNode,
    multiplier: int,
    fragments: Mapping[str, FragmentDefinitionNode],
    variables: Mapping[str, Any],
    spreading: frozenset[str],
) -> int:
    total = 0
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            field = _field(parent, selection.name.value)
            if field is None or selection.selection_set is None:
                continue  # a leaf, introspection, or unknown (validation answered already)
            size = _first(selection, variables) if "first" in field.args else 1
            total += multiplier * size
            total += _cost(
                schema,
                get_named_type(field.type),
                selection.selection_set,
                multiplier * size,
                fragments,
                variables,
                spreading,
            )
        elif isinstance(selection, InlineFragmentNode):
            condition = selection.type_condition
            kind = schema.get_type(condition.name.value) if condition else parent
            total += _cost(
                schema, kind, selection.selection_set, multiplier, fragments, variables, spreading
            )
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is None or name in spreading:
                continue  # a cycle is a validation error already
            kind = schema.get_type(fragment.type_condition.name.value)
            total += _cost(
                schema,
                kind,
                fragment.selection_set,
                multiplier,
                fragments,
                variables,
                spreading | {name},
            )
    return total


def _field(parent: Any, name: str) -> GraphQLField | None:
    if name.startswith("__") or not isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
        return None
    return parent.fields.get(name)


def _first(node: FieldNode, variables: Mapping[str, Any]) -> int:
    """The `first` asked (a literal or a variable); the default when absent, the maximum when
    it is not a usable number (execution would refuse it anyway)."""
    for argument in node.arguments or ():
        if argument.name.value != "first":
            continue
        value = argument.value
        if isinstance(value, IntValueNode):
            return max(0, int(value.value))
        if isinstance(value, VariableNode):
            given = variables.get(value.name.value, DEFAULT_PER_PAGE)
            return max(0, given) if isinstance(given, int) else MAX_PER_PAGE
        return MAX_PER_PAGE
    return DEFAULT_PER_PAGE
