"""Metrics of routes that carry several operations (GraphQL): one series per operation name
and type, the names bounded per process. The request pipeline records them beside the request
metrics (app/core/metrics.py) when a handler named its operation."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Histogram

OPERATIONS = Counter(
    "postboard_operations",
    "Operations answered on routes that carry several (GraphQL), by route, operation name "
    "(<anonymous> when the client gave none; <other> past a bounded number of names), type "
    "and HTTP status.",
    ["route", "operation", "type", "status"],
    registry=None,
)
OPERATION_LATENCY = Histogram(
    "postboard_operation_duration_seconds",
    "Time from the request reaching Flask to its response, by route, operation name and type.",
    ["route", "operation", "type"],
    registry=None,
)

ANONYMOUS_OPERATION = "<anonymous>"
OTHER_OPERATION = "<other>"
# Operation names are the client's: at most this many distinct ones per process become label
# values (the rest count as <other>), so a client cannot grow the series without bound.
MAX_OPERATION_NAMES = 200
MAX_OPERATION_CHARS = 64
_operation_names: set[str] = set()
_children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}
_NAME_CHARS = frozenset("_0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def operation_label(name: str | None) -> str:
    """The name as the access line shows it: a GraphQL name of up to 64 characters, else
    <other>; none given: <anonymous>."""
    if not name:
        return ANONYMOUS_OPERATION
    if len(name) > MAX_OPERATION_CHARS or not _NAME_CHARS.issuperset(name):
        return OTHER_OPERATION
    return name


def record_operation(
    route: str, name: str | None, kind: str, status: int, seconds: float | None
) -> None:
    """Count (and time) one operation of a route that carries several."""
    label = operation_label(name)
    if label not in _operation_names and label not in (ANONYMOUS_OPERATION, OTHER_OPERATION):
        if len(_operation_names) >= MAX_OPERATION_NAMES:
            label = OTHER_OPERATION
        else:
            _operation_names.add(label)
    children = _children.get((route, label, kind, status))
    if children is None:  # label children resolved once per series (bounded by the names)
        children = _children[(route, label, kind, status)] = (
            OPERATIONS.labels(route, label, kind, str(status)),
            OPERATION_LATENCY.labels(route, label, kind),
        )
    children[0].inc()
    if seconds is not None:
        children[1].observe(seconds)


def zero_operations(route: str, kinds: Iterable[str]) -> None:
    """The operation families in the first scrape, at 0, for a route that carries operations."""
    for kind in kinds:
        OPERATIONS.labels(route, ANONYMOUS_OPERATION, kind, "200")
        OPERATION_LATENCY.labels(route, ANONYMOUS_OPERATION, kind)
