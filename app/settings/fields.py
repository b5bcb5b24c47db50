"""How a setting is declared, read, parsed and checked (the machinery behind `Settings`).

A setting is a dataclass field whose metadata names its environment variable, its default and
its checks. Values from the environment are parsed by environs; overrides go through the same
marshmallow fields environs uses; both then pass the same checks (marshmallow validators).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import limits
import marshmallow as ma
from environs import Env
from marshmallow.validate import OneOf, Range, Validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

Field = dataclasses.Field[Any]
# The settings read so far, by field name: what a default computed from other settings sees.
Values = Mapping[str, Any]
STRINGS = tuple[str, ...]  # a comma-separated list


class ConfigError(RuntimeError):
    """The environment does not describe a configuration we can run with."""


def setting(
    env: str,
    default: Any,
    *checks: Callable[[Any], Any],
    flask: str | Literal[False] | None = False,
    export: Callable[[Any], Any] | None = None,
    secret: bool = False,
    normalise: Callable[[str], str] | None = None,
) -> Any:
    """A field read from the variable `env`; `default` may be a function of the fields above it.

    `flask`: its Flask config key (the variable's name unless given; None = not in the Flask
    config); `export`: converts the value for Flask; `secret`: kept out of repr() (and so out of
    logs); `normalise`: applied to the text first (case-insensitive choices).
    """
    metadata = {
        "env": env,
        "default": default,
        "checks": checks,
        "flask": env if flask is False else flask,
        "export": export,
        "normalise": normalise,
    }
    return dataclasses.field(repr=not secret, metadata=metadata)


# --- checks: marshmallow validators, each raising ValidationError with a message -------------


def at_least(minimum: float) -> Validator:
    return Range(min=minimum, error="must be >= {min}, not {input}")


def above(minimum: float) -> Validator:
    return Range(min=minimum, min_inclusive=False, error="must be > {min}, not {input}")


def a_limit_string(value: str) -> None:
    """A limit string of the limits library, such as `100/minute` or `10/second;1000/day`."""
    try:
        parsed = limits.parse_many(value)
    except ValueError as error:
        raise ma.ValidationError(f"{value!r} is not a limit string such as 100/minute") from error
    if any(item.amount < 1 for item in parsed):
        raise ma.ValidationError(f"{value!r} allows nothing (RATELIMIT_ENABLED=false: no limits)")


def a_database_url(value: str) -> None:
    try:
        make_url(value)
    except ArgumentError as error:
        # Not echoed: a URL may carry a password.
        raise ma.ValidationError(
            "is not a URL such as postgresql+psycopg://user@host/db"
        ) from error


def a_redis_url(value: str) -> None:
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ma.ValidationError("must start with redis://, rediss:// or unix://")


def a_url(value: str) -> None:
    if not re.match(r"^[a-z][a-z0-9+.-]*://", value):
        raise ma.ValidationError("is not a URL such as redis://host:6379/1")


def a_queue_name(value: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9._:-]{1,100}", value):
        raise ma.ValidationError("must be 1-100 of A-Z a-z 0-9 . _ : -")


# --- reading and parsing -------------------------------------------------------------------


def kind_of(hint: Any) -> Any:
    """What a field holds, for parsing: its type without `| None`."""
    if get_origin(hint) is Literal or hint == STRINGS:
        return hint
    args = [arg for arg in get_args(hint) if arg is not type(None)]
    return args[0] if args else hint


# The environs parser of each scalar kind.
_ENVIRONS_PARSERS = {bool: "bool", int: "int", float: "float", str: "str", Path: "path"}


def _override_field(kind: Any, raw: Any) -> ma.fields.Field:
    """The marshmallow field environs would parse this kind with (text is parsed like text)."""
    if kind is int:  # a number given as a number must be integral
        return ma.fields.Integer(strict=not isinstance(raw, str))
    field = {bool: ma.fields.Boolean, float: ma.fields.Float}.get(kind, ma.fields.String)
    return field()


def read_variable(env: Env, field: Field, kind: Any) -> Any:
    """The variable parsed by environs; None when unset or empty (then the default applies).

    A variable environs cannot parse is recorded in `env` and reported by `env.seal()`.
    """
    name, normalise = field.metadata["env"], field.metadata["normalise"]
    text = env.str(name, None)
    if text is None or not text.strip():
        return None
    if normalise:
        return normalise(text.strip())
    if kind == STRINGS:
        return tuple(env.list(name))
    if get_origin(kind) is Literal:
        return text.strip()  # checked against the choices with every other value
    return getattr(env, _ENVIRONS_PARSERS[kind])(name)


def parse_override(field: Field, raw: Any, kind: Any) -> Any:
    """An override parsed as the variable would be; None or "" means the default."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    normalise = field.metadata["normalise"]
    if normalise and isinstance(raw, str):
        return normalise(raw.strip())
    if kind == STRINGS:
        return tuple(raw.split(",") if isinstance(raw, str) else raw)
    if get_origin(kind) is Literal:
        return ma.fields.String().deserialize(raw)
    value = _override_field(kind, raw).deserialize(raw)
    return Path(value) if kind is Path else value


def default_of(field: Field, values: Values) -> Any:
    default = field.metadata["default"]
    return default(values) if callable(default) else default


def problems_with(field: Field, value: Any, kind: Any) -> list[str]:
    """What is wrong with `value` for `field`, each naming the variable (none when it is fine)."""
    checks = list(field.metadata["checks"])
    if get_origin(kind) is Literal:
        checks.insert(0, OneOf(get_args(kind), error="must be one of {choices}, not {input!r}"))
    for check in checks if value is not None else []:
        try:
            check(value)
        except ma.ValidationError as error:
            return [f"{field.metadata['env']}: {message}" for message in messages(error)]
    return []


def messages(error: ma.ValidationError) -> list[str]:
    found = error.messages
    if isinstance(found, dict):
        return [f"{m}" for items in found.values() for m in items]
    return [str(m) for m in found] if isinstance(found, list) else [str(found)]


def resolve(
    fields: Iterable[Field], overrides: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split overrides into settings (re-keyed by field name; given by field name, variable or
    Flask key) and other Flask or extension options (upper-case keys, such as COMPRESS_MIN_SIZE).

    Any other key is refused: a misspelt field name would otherwise be silently ignored.
    """
    index: dict[str, str] = {}
    for field in fields:
        index.update({field.name: field.name, field.metadata["env"]: field.name})
        if field.metadata["flask"]:
            index[field.metadata["flask"]] = field.name
    unknown = sorted(key for key in overrides if key not in index and not key.isupper())
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(unknown)}")
    given = {index[key]: value for key, value in overrides.items() if key in index}
    return given, {key: value for key, value in overrides.items() if key not in index}


def report(problems: list[str]) -> None:
    """Raise one ConfigError listing every problem, each naming its variable."""
    if problems:
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems))
