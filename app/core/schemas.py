"""Shared marshmallow pieces: text validation, envelopes, list metadata."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import marshmallow as ma

# Control characters (C0, DEL, C1) other than tab and newlines; NUL breaks PostgreSQL text.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_ANY_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class Text(ma.fields.String):
    """A string that must be valid, printable text: no NUL or control characters, no lone
    surrogates. `multiline` allows tab and newlines; `strip` trims surrounding white space."""

    def __init__(self, *, multiline: bool = False, strip: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.multiline = multiline
        self.strip = strip

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        pattern = _CONTROL if self.multiline else _ANY_CONTROL
        if pattern.search(text):
            raise ma.ValidationError("Control characters are not allowed.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ma.ValidationError("Not valid Unicode text.") from exc
        text = unicodedata.normalize("NFC", text)
        return text.strip() if self.strip else text


class StrictSchema(ma.Schema):
    """Request bodies: unknown fields are an error, not silently dropped."""

    class Meta:
        unknown = ma.RAISE


class PageMetaSchema(ma.Schema):
    page = ma.fields.Integer(metadata={"description": "Offset mode only."})
    per_page = ma.fields.Integer(required=True)
    total = ma.fields.Integer(metadata={"description": "Offset mode only."})
    total_is_estimate = ma.fields.Boolean(
        metadata={"description": "Present and true when `total` is the planner's estimate."}
    )
    next_cursor = ma.fields.String(
        allow_none=True,
        required=True,
        metadata={"description": "Pass as `?cursor=` for the next page; null on the last page."},
    )


def envelope_schema(name: str, item: type[ma.Schema], *, many: bool = False) -> type[ma.Schema]:
    """`{"data": item}` or, for lists, `{"data": [item], "meta": PageMeta}`."""
    fields: dict[str, Any] = {
        "data": ma.fields.List(ma.fields.Nested(item), required=True)
        if many
        else ma.fields.Nested(item, required=True)
    }
    if many:
        fields["meta"] = ma.fields.Nested(PageMetaSchema, required=True)
    return ma.Schema.from_dict(fields, name=name)
